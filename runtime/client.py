"""A small client of the head service, for the launcher, the agent and tests."""

from __future__ import annotations

import io
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import grpc
import grpc.experimental

from runtime.auth import call_metadata
from runtime.blobs import usable_memory_dir, write_blob
from runtime.bulk_copy import BulkReader
from runtime.spare import Spare
from runtime.limits import CHUNK_BYTES, GRPC_OPTIONS
from runtime.proto import head_pb2 as pb
from runtime.proto import head_pb2_grpc as pb_grpc
from runtime.store import KEY_FILE, arg_file, result_file


_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class HeadUnavailable(grpc.RpcError, ConnectionError):
    """The head service does not answer (down, restarting, unreachable): one line that says so. Still an
    RpcError with its code, so callers that retry on RpcError go on doing so."""

    def __init__(self, address: str, code: grpc.StatusCode):
        super().__init__(f"the head service at {address} does not answer ({code.name}): is the cluster up, "
                         f"or is its head restarting? (`launch status`)")
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self)


class _Stub:
    """The generated stub, with 'the head is away' turned into HeadUnavailable (unary calls)."""

    def __init__(self, stub, address: str):
        self._stub, self._address = stub, address

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except grpc.RpcError as e:
                if getattr(e, "code", None) and e.code() in _AWAY and not isinstance(e, HeadUnavailable):
                    raise HeadUnavailable(self._address, e.code()) from None
                raise

        return call


# A head restarted by its supervisor answers again within about a second: a channel that lost it tries
# again from 0.1 s on, at most 2 s apart (gRPC's own backoff starts at 1 s and grows to 2 minutes).
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000)]


# a GetResults the head answered busy is asked again after this, doubling up to the max
BUSY_RETRY_S = 0.05
BUSY_RETRY_MAX_S = 1.0


class _ChunkReader(io.RawIOBase):
    """A FetchResult stream as a readable file; `readinto` fills the whole buffer it is given (until the
    stream ends), as an unpickler reading a large value straight into its bytes object expects."""

    def __init__(self, client: HeadClient, stream):
        self.client, self.stream = client, stream
        self.piece, self.at = memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(out):
            if self.at == len(self.piece):
                try:
                    chunk = next(self.stream, None)
                except grpc.RpcError as e:
                    if e.code() in _AWAY and not isinstance(e, HeadUnavailable):
                        raise HeadUnavailable(self.client.address, e.code()) from None
                    raise
                if chunk is None:
                    break
                self.piece, self.at = memoryview(chunk.data), 0
                continue
            n = min(len(out) - filled, len(self.piece) - self.at)
            out[filled:filled + n] = self.piece[self.at:self.at + n]
            filled += n
            self.at += n
        return filled

    def close(self) -> None:
        if not self.closed:
            self.stream.cancel()
        super().close()


class HeadClient:
    def __init__(self, address: str, token: str, timeout_s: float = 10.0, streams_on_caller: bool = False):
        """streams_on_caller: a response stream (the agent's work stream) is read on the thread that iterates
        it, not handed over by the channel's own thread: a hand-off less on every message (40-50 us of a
        task's round trip measured). Not for a process whose main thread iterates a stream: it cannot be
        interrupted (Ctrl-C) until the next message comes."""
        self.address = address
        self.timeout_s = timeout_s
        options = GRPC_OPTIONS + RECONNECT_OPTIONS
        if streams_on_caller:
            options.append((grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1))
        self._channel = grpc.insecure_channel(address, options=options)
        self._raw = pb_grpc.HeadStub(self._channel)
        self._stub = _Stub(self._raw, address)
        self._md = call_metadata(token)
        # GetResults as messages on one stream (Session), for one caller at a time; others make calls
        self._session_lock = threading.Lock()
        self._session: tuple[queue.SimpleQueue, object] | None = None
        self._sessions_refused = False
        self._blobs: Path | None | bool = None  # the head's blobs folder where this process shares its disk
        self._memory: Path | None = None  # and its memory folder (runtime/blobs.py), if it has one
        self._spare: Spare | None = None  # a file there made ready for the next large value (runtime/spare.py)

    def close(self) -> None:
        self._close_session()
        self._channel.close()
        if self._spare is not None:
            self._spare.close()

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cluster_state(self) -> pb.ClusterState:
        return self._stub.GetClusterState(pb.ClusterStateRequest(), metadata=self._md, timeout=self.timeout_s)

    def watch_demand(self, seen: str, timeout_s: float) -> pb.WatchDemandReply:
        """The demand once its fingerprint is not `seen` (at most timeout_s later: the same one)."""
        return self._stub.WatchDemand(pb.WatchDemandRequest(seen=seen, timeout_s=timeout_s), metadata=self._md,
                                      timeout=timeout_s + self.timeout_s)

    def register(self, request: pb.RegisterNodeRequest) -> pb.RegisterNodeReply:
        return self._stub.RegisterNode(request, metadata=self._md, timeout=self.timeout_s)

    def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatReply:
        return self._stub.Heartbeat(request, metadata=self._md, timeout=self.timeout_s)

    # --- work ---------------------------------------------------------------------------------------

    def submit(self, spec: pb.WorkSpec) -> str:
        return self.submit_many([spec])[0]

    def submit_many(self, specs: list[pb.WorkSpec], ids: list[str] | None = None,
                    released: list[str] | None = None) -> list[str]:
        """`released`: values this client put and dropped without passing them on (freed after these specs)."""
        reply = self._stub.Submit(pb.SubmitRequest(specs=specs, ids=ids or [], released=released or []),
                                  metadata=self._md, timeout=self.timeout_s)
        if self._spare is not None and ids:
            self._spare.sent(ids)
        return list(reply.ids)

    def get_results(self, ids: list[str], timeout_s: float | None, num_returns: int = 0,
                    submit: pb.SubmitRequest | None = None, caller_id: str = "") -> list[pb.ItemResult]:
        """Results of the items that are done, waiting up to timeout_s (None: forever) for num_returns;
        `submit` is submitted first, in the same call."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        req = pb.GetResultsRequest(ids=ids, timeout_s=-1 if timeout_s is None else timeout_s,
                                   num_returns=num_returns, submit=submit, caller_id=caller_id)
        reply = self._get(req)
        if self._spare is not None and submit is not None and submit.ids:
            self._spare.sent(submit.ids)
        results = list(reply.results)
        pause = BUSY_RETRY_S
        while reply.busy:  # the head lets no more calls wait: ask again shortly for what is still wanted
            got = {r.id for r in results}
            rest = [i for i in ids if i not in got]
            want = (num_returns or len(ids)) - len(results)
            left = None if deadline is None else deadline - time.monotonic()
            if want <= 0 or (left is not None and left <= 0):
                break
            time.sleep(min(pause, left) if left is not None else pause)  # backoff: the head asked for it
            pause = min(pause * 2, BUSY_RETRY_MAX_S)
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            reply = self._get(pb.GetResultsRequest(ids=rest, timeout_s=-1 if left is None else left,
                                                   num_returns=want, caller_id=caller_id))
            results += reply.results
        while reply.truncated:  # more were done than one reply carries: fetch the rest, done already
            got = {r.id for r in results}
            rest = [i for i in ids if i not in got]
            reply = self._get(pb.GetResultsRequest(ids=rest, timeout_s=0))
            results += reply.results
        return results

    def _get(self, req: pb.GetResultsRequest) -> pb.GetResultsReply:
        """On the session stream when no other caller of this client uses it, else as a call."""
        if not self._sessions_refused and self._session_lock.acquire(blocking=False):
            try:
                return self._session_get(req)
            finally:
                self._session_lock.release()
        return self._stub.GetResults(req, metadata=self._md)

    def _session_get(self, req: pb.GetResultsRequest) -> pb.GetResultsReply:
        """(holding _session_lock) One request and its reply on the session, opened if need be. Anything
        but a reply closes the session (a reply must never be left for the next caller to read)."""
        if self._session is None:
            requests: queue.SimpleQueue = queue.SimpleQueue()

            def stream():
                while (r := requests.get()) is not None:
                    yield r

            self._session = (requests, self._raw.Session(stream(), metadata=self._md))
        requests, replies = self._session
        requests.put(pb.SessionRequest(get=req))
        try:
            return next(replies).reply
        except grpc.RpcError as e:
            self._close_session()
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the head has sessions enough: calls, then
                self._sessions_refused = True
                return self._stub.GetResults(req, metadata=self._md)
            if e.code() in _AWAY:
                raise HeadUnavailable(self.address, e.code()) from None
            raise
        except StopIteration:
            self._close_session()
            raise HeadUnavailable(self.address, grpc.StatusCode.UNAVAILABLE) from None
        except BaseException:
            self._close_session()
            raise

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session[0].put(None)
            session[1].cancel()

    def cancel(self, item_id: str, recursive: bool = False, restart: bool = False) -> str:
        return self._stub.Cancel(pb.CancelRequest(id=item_id, recursive=recursive, restart=restart), metadata=self._md,
                                 timeout=self.timeout_s).state

    def hold(self, ids: list[str]) -> None:
        """Values this process holds refs to: kept on the head a while more (runtime/holding.py)."""
        self._stub.KeepAlive(pb.KeepAliveRequest(held=ids), metadata=self._md, timeout=self.timeout_s)

    def keep_alive(self, owner_id: str) -> None:
        self._stub.KeepAlive(pb.KeepAliveRequest(owner_id=owner_id), metadata=self._md, timeout=self.timeout_s)

    def get_actor(self, name: str) -> pb.GetActorReply:
        return self._stub.GetActor(pb.GetActorRequest(name=name), metadata=self._md, timeout=self.timeout_s)

    def get_actor_place(self, actor_id: str) -> pb.GetActorReply:
        """An actor's state, and where its calls can go straight (runtime/direct.py), if they can."""
        return self._stub.GetActor(pb.GetActorRequest(id=actor_id), metadata=self._md, timeout=self.timeout_s)

    def list_items(self, kind: str = "") -> list[pb.ItemInfo]:
        return list(self.recent_items(kind).items)

    def recent_items(self, kind: str = "", limit: int = 0) -> pb.ListItemsReply:
        """Live items and (with `limit`) only the newest done ones, with every item's count by state."""
        return self._stub.ListItems(pb.ListItemsRequest(kind=kind, limit=limit), metadata=self._md,
                                    timeout=self.timeout_s)

    def job_logs(self, item_id: str, offset: int = 0) -> pb.JobLogsReply:
        return self._stub.JobLogs(pb.JobLogsRequest(id=item_id, offset=offset), metadata=self._md,
                                  timeout=self.timeout_s)

    def drain(self, node_id: str, undrain: bool = False) -> pb.DrainReply:
        return self._stub.Drain(pb.DrainRequest(node_id=node_id, undrain=undrain), metadata=self._md,
                                timeout=self.timeout_s)

    def remove_node(self, node_id: str, reason: str = "") -> pb.RemoveNodeReply:
        return self._stub.RemoveNode(pb.RemoveNodeRequest(node_id=node_id, reason=reason), metadata=self._md,
                                     timeout=self.timeout_s)

    # --- agent side ---------------------------------------------------------------------------------

    def work_stream(self, node_id: str):
        return self._stub.WorkStream(pb.WorkStreamRequest(node_id=node_id), metadata=self._md)

    def report_stream(self, requests):
        """ReportAcks for the ReportRequests the iterator yields (the agent's report stream)."""
        return self._stub.ReportStream(requests, metadata=self._md)

    def report(self, node_id: str, results: list[pb.ItemResult]) -> None:
        self._stub.Report(pb.ReportRequest(node_id=node_id, results=results), metadata=self._md,
                          timeout=self.timeout_s)

    # --- payloads and results too large for a message: in chunks --------------------------------

    def _upload(self, method: str, item_id: str, source: bytes | Path, node_id: str = "", direct: bool = False) -> None:
        """`source` in CHUNK_BYTES pieces: bytes, or a file read a piece at a time (never whole)."""
        if isinstance(source, Path):
            with open(source, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                pieces = iter(lambda: f.read(CHUNK_BYTES), b"")
                return self._upload_pieces(method, item_id, node_id, pieces, size, direct)
        view = memoryview(source)
        pieces = (bytes(view[start:start + CHUNK_BYTES]) for start in range(0, max(len(view), 1), CHUNK_BYTES))
        return self._upload_pieces(method, item_id, node_id, pieces, len(view), direct)

    def _upload_pieces(self, method: str, item_id: str, node_id: str, pieces, size: int, direct: bool = False) -> None:
        def chunks():
            yield pb.Chunk(id=item_id, node_id=node_id, data=next(pieces, b""), direct=direct)
            for piece in pieces:
                yield pb.Chunk(data=piece)

        reply = getattr(self._stub, method)(chunks(), metadata=self._md)
        if reply.size != size:
            raise ConnectionError(f"the head stored {reply.size} of {size} bytes of {item_id}")

    def shared_blobs(self) -> Path | None:
        """The head's blobs folder, if this process shares the head's disk (a driver or an agent on the
        head's machine, as the same user): proven by reading there the key the head says is there. Then
        payloads and results are files to read and write, not streams over gRPC. Asked once."""
        if self._blobs is None:
            self._blobs = False
            try:
                st = self.cluster_state()
                found = Path(st.store_dir) if st.store_dir else None
                if found is not None and (found / KEY_FILE).read_text().strip() == st.store_key:
                    self._blobs, self._memory = found, usable_memory_dir(found)
                    self._spare = Spare(self._memory) if self._memory is not None else None
            except (OSError, grpc.RpcError):
                pass
        return self._blobs or None

    def _read_shared(self, name: str) -> bytes | None:
        blobs = self.shared_blobs()
        if blobs is None:
            return None
        try:
            return (blobs / name).read_bytes()
        except OSError:  # not there (gone, or never made): the head says why
            return None

    def _fetch(self, method: str, item_id: str) -> bytes:
        shared = self._read_shared(arg_file(item_id) if method == "FetchArgs" else result_file(item_id))
        if shared is not None:
            return shared
        parts = []
        try:
            for chunk in getattr(self._stub, method)(pb.FetchRequest(id=item_id, offset=0), metadata=self._md):
                parts.append(chunk.data)
        except grpc.RpcError as e:
            if e.code() in _AWAY and not isinstance(e, HeadUnavailable):
                raise HeadUnavailable(self.address, e.code()) from None
            raise
        return b"".join(parts)

    def upload_args(self, item_id: str, data: bytes, fresh: bool = False) -> None:
        """`fresh`: an id no item has (made just now): on the head's disk it is written there directly."""
        blobs = self.shared_blobs() if fresh else None
        if blobs is not None:
            try:  # (a task's payload: on disk, never in memory)
                write_blob(blobs / arg_file(item_id), None, lambda f: f.write(data))
                return
            except OSError:  # (a full disk): the head's own upload says it, in its words
                pass
        self._upload("UploadArgs", item_id, data)

    def upload_value(self, item_id: str, write: Callable[[BinaryIO], None], fresh: bool = False) -> int:
        """A value too large for a message, written by `write(file)` (a pickler: no copy of it in memory)
        where the head keeps it: on the head's machine its file (`fresh` ids only; in memory while there
        is room, runtime/blobs.py), else a private temporary file uploaded in chunks. Returns its size."""
        blobs = self.shared_blobs() if fresh else None
        if blobs is not None:
            try:
                return write_blob(blobs / arg_file(item_id), self._memory, write, self._spare, item_id)
            except OSError:  # (a full disk): the head's own upload says it, in its words
                pass
        with tempfile.NamedTemporaryFile(prefix="launch-upload-") as f:  # (0600, removed however this ends)
            write(f)
            f.flush()
            self._upload("UploadArgs", item_id, Path(f.name))
            return f.tell()

    def value_freed(self, item_id: str) -> None:
        """(from a finalizer: no lock, no call) A value this process wrote here will be read by no one: the
        next large value may be written over its file (runtime/spare.py)."""
        if self._spare is not None:
            self._spare.freed(item_id)

    def fetch_args(self, item_id: str) -> bytes:
        return self._fetch("FetchArgs", item_id)

    def upload_result(self, item_id: str, node_id: str, source: bytes | Path, direct: bool = False) -> None:
        """`direct`: of a call sent straight to the node (runtime/direct.py), not given by the head."""
        self._upload("UploadResult", item_id, source, node_id, direct)

    def fetch_result(self, item_id: str) -> bytes:
        return self._fetch("FetchResult", item_id)

    def open_result(self, item_id: str) -> BulkReader:
        """A stored result as a stream read from the head a chunk at a time (or its file, on the head's
        disk): an unpickler reading it builds the value without the whole pickle ever in memory beside it."""
        blobs = self.shared_blobs()
        if blobs is not None:
            try:
                return BulkReader(open(blobs / result_file(item_id), "rb"))
            except OSError:
                pass
        return BulkReader(_ChunkReader(self, self._stub.FetchResult(pb.FetchRequest(id=item_id, offset=0),
                                                                    metadata=self._md)))

    def open_own_value(self, item_id: str) -> BulkReader | None:
        """(a value this process put on the head's disk) Its file: its result's name once the head took
        it, its payload's until then; None if neither is there."""
        blobs = self.shared_blobs()
        for name in (result_file(item_id), arg_file(item_id), result_file(item_id)) if blobs else ():
            try:  # (the last: renamed meanwhile)
                return BulkReader(open(blobs / name, "rb"))
            except OSError:
                continue
        return None

    def append_log(self, request: pb.AppendLogRequest) -> None:
        self._stub.AppendLog(request, metadata=self._md, timeout=self.timeout_s)
