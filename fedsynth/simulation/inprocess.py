"""An in-process Flower Grid: the real ServerApp logic and ClientApp, without Ray.

Each virtual SuperNode is a node id with its own Flower ``Context`` (``partition-id``,
``num-partitions``, like the simulation engine gives); a message is delivered by
calling the ClientApp in a worker thread, and ``send_and_receive`` honours its timeout
exactly like a real Grid (a site still working when it expires is simply not heard
from). It runs the whole federation on machines where Ray cannot start and lets the
tests drive every server path deterministically and fast.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

UNCAUGHT = 1002  # Error.code when the ClientApp itself raised


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1, workers: int = 1):
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(
                run_id=run_id,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self._run = Run.create_empty(run_id)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedsynth-site")
        self._inbox: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._counter = 0
        for attr, value in (("run_id", run_id), ("node_id", 0), ("task_id", 1)):
            try:
                getattr(TaskIdentity, attr)
            except RuntimeError:  # not inside a Flower process: give messages an identity
                setattr(TaskIdentity, attr, value)

    # ---- Grid API ------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _deliver(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            # through Flower's wire format, as a SuperNode receives it: the node gets its own
            # copy (a sender that reuses one record for several messages shares nothing)
            return self.client_app(message_from_proto(message_to_proto(message)), context)
        except Exception as err:  # as a SuperNode would: the error travels back as a reply
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=UNCAUGHT, reason=reason), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            with self._lock:
                self._counter += 1
                mid = f"m{self._counter}"
            m.metadata.__dict__["_message_id"] = mid
            self._inbox[mid] = self._pool.submit(self._deliver, m)  # type: ignore[assignment]
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in message_ids:
            fut = self._inbox.get(mid)
            if fut is not None and fut.done():  # type: ignore[union-attr]
                out.append(fut.result())  # type: ignore[union-attr]
                del self._inbox[mid]
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        futures = [self._inbox[mid] for mid in ids]
        wait(futures, timeout=timeout)  # type: ignore[arg-type]
        return list(self.pull_messages(ids))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
