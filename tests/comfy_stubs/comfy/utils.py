"""Stand-in for ``comfy.utils.ProgressBar``: records every update (value, total, preview)."""

updates: list[tuple] = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        updates.append((self.current, self.total, preview))

    def update(self, value):
        self.update_absolute(self.current + value)
