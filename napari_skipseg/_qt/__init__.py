

def camera_of(viewer):
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9 (``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
