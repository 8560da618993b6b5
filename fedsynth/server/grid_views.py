"""Views of Flower's Grid that the round loop hands to Flower's own objects.

* :class:`ActiveGrid`: the Grid without the nodes that dropped out, so a strategy samples
  only sites still taking part;
* :class:`RecordingGrid`: an ActiveGrid that also remembers each node's error replies and
  bytes sent, for a SecAgg+ round, whose workflow keeps neither.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedsynth.protocol import content_bytes


class ActiveGrid(Grid):
    """A view of a Grid without the nodes that dropped out (strategies sample from it)."""

    def __init__(self, grid: Grid, excluded: set[int]):
        self._grid = grid
        self._excluded = excluded

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._excluded]

    def set_run(self, run):  # pragma: no cover - delegation
        return self._grid.set_run(run)

    @property
    def run(self):  # pragma: no cover - delegation
        return self._grid.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - delegation
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages):  # pragma: no cover - delegation
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):  # pragma: no cover - delegation
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - delegation
        return self._grid.send_and_receive(messages, timeout=timeout)


class RecordingGrid(ActiveGrid):
    """The round's view of the Grid: remembers each node's error replies and bytes sent."""

    def __init__(self, grid: Grid, excluded: set[int] | None = None):
        super().__init__(grid, excluded=excluded or set())
        self.errors: dict[int, Message] = {}
        self.bytes_sent: dict[int, int] = {}

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for r in replies:
            node = r.metadata.src_node_id
            if r.has_error():
                self.errors.setdefault(node, r)
            else:
                self.bytes_sent[node] = self.bytes_sent.get(node, 0) + content_bytes(r.content)
        return replies
