"""Size and time limits of what moves through and stays on the head service (one place, for the head,
agents and clients; the docs' "Limits" section, docs/running-work.md, states them).

- A task's payload (function and arguments) and its result may each be up to MAX_OBJECT_BYTES. Up to
  INLINE_BYTES they travel inside the ordinary messages; larger ones move in CHUNK_BYTES pieces
  (UploadArgs/FetchArgs, UploadResult/FetchResult) and live in files of the head's store, never in
  the head process's memory: a value put by a process on the head's machine in a file on its tmpfs
  while there is room (runtime/blobs.py), the rest on its disk. Anything larger fails its task with a
  clear error instead of hanging it.
- One GetResults reply carries at most MAX_REPLY_BYTES of inline results (at least one): the client
  fetches the rest in further replies; a submit batch is cut at the same size.
- Finished work leaves the head's memory at once; its record and result stay in the head's store
  (SQLite on its disk) for RETAIN_FETCHED_S after a client first fetched it, RETAIN_UNFETCHED_S if
  nobody does (a value put with runtime.put: for RETAIN_UNFETCHED_S, however often it is fetched or
  passed to tasks); job records and logs for RETAIN_JOBS_S. A value some process still holds a ref
  to stays longer, as on Ray: every HOLD_RENEW_S each process sends the head the ids of its live refs
  (runtime/holding.py), and the head keeps those values HOLD_S more, past their retention.
"""

MAX_OBJECT_BYTES = 4 << 30
INLINE_BYTES = 1 << 20
CHUNK_BYTES = 4 << 20
MAX_REPLY_BYTES = 32 << 20
MAX_MESSAGE_BYTES = MAX_REPLY_BYTES + INLINE_BYTES + (1 << 20)  # a full reply, one more result, envelope
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]

RETAIN_FETCHED_S = 600.0
RETAIN_UNFETCHED_S = 24 * 3600.0
RETAIN_JOBS_S = 7 * 24 * 3600.0
HOLD_S = 600.0
HOLD_RENEW_S = 120.0
HOLD_BATCH = 20_000  # ids in one KeepAlive

# How the head's refusal of new work while its disk is full begins: clients send it again a while.
STORE_FULL = "the head cannot store new work"


def too_large(what: str, size: int) -> str:
    return (f"its {what} is {size / 2**30:.1f} GiB, over the limit of {MAX_OBJECT_BYTES >> 30} GiB; "
            "pass or return a smaller value, or write it to shared storage and pass its path")
