"""The head service's transfers (runtime/head.py): large payloads and results, and jobs' logs."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import grpc

from runtime.limits import CHUNK_BYTES, MAX_OBJECT_BYTES, too_large
from runtime.proto import head_pb2 as pb
from runtime.store import ID_PATTERN
from runtime.work import DONE_STATES, FAILED, FINISHED, INFEASIBLE, RUNNING


class Transfers:
    """What moves in chunks (payloads and results too large for a message) and jobs' logs. Its state is the
    HeadServicer's (set in HeadServicer.__init__): a part of it, not used alone."""

    def _take_upload(self, node_id: str, r: pb.ItemResult) -> pb.ItemResult:
        """(under self.lock) A result its node uploaded becomes the item's result, if the item is that
        node's: before the completion counts, so whoever is given the value next finds it."""
        item = self.sched.items.get(r.id)
        if not (r.stored and r.state == FINISHED and item is not None and item.state == RUNNING
                and item.node_id == node_id):
            return r
        try:
            self.store.claim_upload(r.id, node_id)
        except OSError as e:
            return pb.ItemResult(id=r.id, state=FAILED, message=f"its result was lost on the head ({e.strerror})")
        return r

    @staticmethod
    def _uploaded(path: Path, size: int) -> bool:
        try:
            return path.stat().st_size == size
        except OSError:
            return False

    def AppendLog(self, request, context):
        if self._state(request.item_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown id {request.item_id}")
        with os.fdopen(os.open(self.store.log_path(request.item_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                       "ab") as f:
            f.write(request.data)
        return pb.AppendLogReply()

    def JobLogs(self, request, context):
        state = self._state(request.id)
        if state is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown job {request.id}")
        done = state in DONE_STATES or state == INFEASIBLE
        try:
            with open(self.store.log_path(request.id), "rb") as f:
                f.seek(request.offset)
                data = f.read(1 << 20)
        except FileNotFoundError:
            data = b""
        # done only once everything was read: the agent ships the log tail before it reports
        return pb.JobLogsReply(data=data, offset=request.offset + len(data), done=done and len(data) < (1 << 20))

    def _receive(self, chunks, path_for, context) -> pb.UploadReply:
        """Write an upload to its file as it arrives (never whole in memory); the first chunk names it."""
        first = next(chunks, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload with no chunks")
        if not ID_PATTERN.fullmatch(first.id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"item id {first.id[:100]!r} is not valid")
        path = path_for(first, context)
        size = 0
        tmp = path.with_name(path.name + ".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            for chunk in itertools.chain([first], chunks):
                size += len(chunk.data)
                if size > MAX_OBJECT_BYTES:
                    tmp.unlink(missing_ok=True)
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large("upload", size))
                f.write(chunk.data)
        os.replace(tmp, path)
        return pb.UploadReply(size=size)

    def _send(self, path: Path, offset: int, context):
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"nothing stored at {path.name}")
        with f:
            f.seek(offset)
            while True:  # (not resumed once its caller is gone)
                data = f.read(CHUNK_BYTES)
                if not data:
                    return
                yield pb.Chunk(data=data)

    def UploadArgs(self, request_iterator, context):
        def path_for(first, context):
            if self._state(first.id) is not None:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"item {first.id} was submitted already")
            return self.store.arg_path(first.id)

        return self._receive(iter(request_iterator), path_for, context)

    def FetchArgs(self, request, context):
        return self._send(self.store.arg_path(request.id), request.offset, context)

    def UploadResult(self, request_iterator, context):
        def path_for(first, context):
            with self.lock:
                item = self.sched.items.get(first.id)
                if first.direct and item is None and not self.store.known([first.id]):
                    pass  # (a call that ran straight: recorded with its report, or its caller's)
                elif item is None or item.state != RUNNING or item.node_id != first.node_id:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{first.id} does not run on {first.node_id}")
            return self.store.upload_path(first.id, first.node_id)

        return self._receive(iter(request_iterator), path_for, context)

    def FetchResult(self, request, context):
        return self._send(self.store.result_path(request.id), request.offset, context)
