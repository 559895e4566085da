"""Size limits of what moves through the head service (one place, for the head, agents and clients).

A task's result (or error) may be up to MAX_RESULT_BYTES; a larger one fails its task with a clear
error instead of hanging it. One GetResults reply carries at most MAX_REPLY_BYTES of results (at
least one result): the client fetches the rest in further replies, so a `get` of many results never
exceeds a message limit. gRPC's own limit is raised to fit both.
"""

MAX_RESULT_BYTES = 256 << 20
MAX_REPLY_BYTES = 64 << 20
MAX_MESSAGE_BYTES = MAX_RESULT_BYTES + (16 << 20)  # a result plus its envelope
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
