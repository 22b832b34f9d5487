"""Stand-in for ``comfy_api.latest.ui``: PreviewImage records the image instead of writing a file."""


class PreviewImage:
    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        self.image = image
        self.animated = animated
        self.values = [{"filename": "preview.png", "subfolder": "", "type": "temp"}]

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}
