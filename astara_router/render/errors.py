"""What a renderer raises when the payload asks for something its daemon's syntax cannot
express safely, or the daemon cannot carry out: the appliers turn it into a 422 naming
``path``, the payload field."""


class RenderError(ValueError):
    def __init__(self, path, message):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
