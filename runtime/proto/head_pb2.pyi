from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("amounts",)
    class AmountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    amounts: _containers.ScalarMap[str, float]
    def __init__(self, amounts: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "node_type", "address", "is_head", "total", "labels", "gpu_ids", "running", "first", "call_port")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_HEAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    CALL_PORT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_type: str
    address: str
    is_head: bool
    total: Resources
    labels: _containers.ScalarMap[str, str]
    gpu_ids: _containers.RepeatedScalarFieldContainer[str]
    running: _containers.RepeatedCompositeFieldContainer[RunningItem]
    first: bool
    call_port: int
    def __init__(self, node_id: _Optional[str] = ..., node_type: _Optional[str] = ..., address: _Optional[str] = ..., is_head: _Optional[bool] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., gpu_ids: _Optional[_Iterable[str]] = ..., running: _Optional[_Iterable[_Union[RunningItem, _Mapping]]] = ..., first: _Optional[bool] = ..., call_port: _Optional[int] = ...) -> None: ...

class RunningItem(_message.Message):
    __slots__ = ("id", "attempt")
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    attempt: int
    def __init__(self, id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class RegisterNodeReply(_message.Message):
    __slots__ = ("heartbeat_interval_s", "drop")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    drop: _containers.RepeatedCompositeFieldContainer[RunningItem]
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., drop: _Optional[_Iterable[_Union[RunningItem, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "preempt_at", "preempt_reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PREEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    PREEMPT_REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    preempt_at: float
    preempt_reason: str
    def __init__(self, node_id: _Optional[str] = ..., preempt_at: _Optional[float] = ..., preempt_reason: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known", "heartbeat_interval_s")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    known: bool
    heartbeat_interval_s: float
    def __init__(self, known: _Optional[bool] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class ClusterStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkSpec(_message.Message):
    __slots__ = ("kind", "name", "request", "payload", "command", "env", "working_dir", "files", "depends_on", "max_retries", "payload_size", "actor_id", "actor_name", "pg_id", "bundle_index", "bundles", "strategy", "owner_id", "parent_id", "runtime_env", "outcome", "min_actor_attempt")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    PG_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ENV_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MIN_ACTOR_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    request: Resources
    payload: bytes
    command: str
    env: _containers.ScalarMap[str, str]
    working_dir: str
    files: _containers.ScalarMap[str, bytes]
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    max_retries: int
    payload_size: int
    actor_id: str
    actor_name: str
    pg_id: str
    bundle_index: int
    bundles: _containers.RepeatedCompositeFieldContainer[Resources]
    strategy: str
    owner_id: str
    parent_id: str
    runtime_env: str
    outcome: ItemResult
    min_actor_attempt: int
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., request: _Optional[_Union[Resources, _Mapping]] = ..., payload: _Optional[bytes] = ..., command: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., working_dir: _Optional[str] = ..., files: _Optional[_Mapping[str, bytes]] = ..., depends_on: _Optional[_Iterable[str]] = ..., max_retries: _Optional[int] = ..., payload_size: _Optional[int] = ..., actor_id: _Optional[str] = ..., actor_name: _Optional[str] = ..., pg_id: _Optional[str] = ..., bundle_index: _Optional[int] = ..., bundles: _Optional[_Iterable[_Union[Resources, _Mapping]]] = ..., strategy: _Optional[str] = ..., owner_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., runtime_env: _Optional[str] = ..., outcome: _Optional[_Union[ItemResult, _Mapping]] = ..., min_actor_attempt: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("specs", "ids", "released")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[WorkSpec]
    ids: _containers.RepeatedScalarFieldContainer[str]
    released: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, specs: _Optional[_Iterable[_Union[WorkSpec, _Mapping]]] = ..., ids: _Optional[_Iterable[str]] = ..., released: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("id", "state", "value", "error", "message", "exit_code", "node_id", "value_size", "stored", "direct")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    value: bytes
    error: bytes
    message: str
    exit_code: int
    node_id: str
    value_size: int
    stored: bool
    direct: WorkSpec
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., value: _Optional[bytes] = ..., error: _Optional[bytes] = ..., message: _Optional[str] = ..., exit_code: _Optional[int] = ..., node_id: _Optional[str] = ..., value_size: _Optional[int] = ..., stored: _Optional[bool] = ..., direct: _Optional[_Union[WorkSpec, _Mapping]] = ...) -> None: ...

class GetResultsRequest(_message.Message):
    __slots__ = ("ids", "timeout_s", "num_returns", "submit", "caller_id")
    IDS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    NUM_RETURNS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    num_returns: int
    submit: SubmitRequest
    caller_id: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ..., num_returns: _Optional[int] = ..., submit: _Optional[_Union[SubmitRequest, _Mapping]] = ..., caller_id: _Optional[str] = ...) -> None: ...

class GetResultsReply(_message.Message):
    __slots__ = ("results", "truncated", "busy")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    truncated: bool
    busy: bool
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., truncated: _Optional[bool] = ..., busy: _Optional[bool] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("get",)
    GET_FIELD_NUMBER: _ClassVar[int]
    get: GetResultsRequest
    def __init__(self, get: _Optional[_Union[GetResultsRequest, _Mapping]] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("reply",)
    REPLY_FIELD_NUMBER: _ClassVar[int]
    reply: GetResultsReply
    def __init__(self, reply: _Optional[_Union[GetResultsReply, _Mapping]] = ...) -> None: ...

class KeepAliveRequest(_message.Message):
    __slots__ = ("owner_id", "held")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    held: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, owner_id: _Optional[str] = ..., held: _Optional[_Iterable[str]] = ...) -> None: ...

class KeepAliveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetActorRequest(_message.Message):
    __slots__ = ("name", "id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class GetActorReply(_message.Message):
    __slots__ = ("id", "state", "class_name", "call_address", "attempt")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CALL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    class_name: str
    call_address: str
    attempt: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., class_name: _Optional[str] = ..., call_address: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("id", "recursive", "restart")
    ID_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    id: str
    recursive: bool
    restart: bool
    def __init__(self, id: _Optional[str] = ..., recursive: _Optional[bool] = ..., restart: _Optional[bool] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ItemInfo(_message.Message):
    __slots__ = ("id", "kind", "name", "state", "node_id", "request", "submitted_at", "started_at", "finished_at", "exit_code", "message", "attempt")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    name: str
    state: str
    node_id: str
    request: Resources
    submitted_at: float
    started_at: float
    finished_at: float
    exit_code: int
    message: str
    attempt: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., node_id: _Optional[str] = ..., request: _Optional[_Union[Resources, _Mapping]] = ..., submitted_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("kind", "limit")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    limit: int
    def __init__(self, kind: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListItemsReply(_message.Message):
    __slots__ = ("items", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemInfo]
    counts: _containers.ScalarMap[str, int]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemInfo, _Mapping]]] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class JobLogsRequest(_message.Message):
    __slots__ = ("id", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    offset: int
    def __init__(self, id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class JobLogsReply(_message.Message):
    __slots__ = ("data", "offset", "done")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    done: bool
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("node_id", "undrain")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    undrain: bool
    def __init__(self, node_id: _Optional[str] = ..., undrain: _Optional[bool] = ...) -> None: ...

class DrainReply(_message.Message):
    __slots__ = ("drained", "running")
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    drained: bool
    running: int
    def __init__(self, drained: _Optional[bool] = ..., running: _Optional[int] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RemoveNodeReply(_message.Message):
    __slots__ = ("known", "requeued")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    known: bool
    requeued: int
    def __init__(self, known: _Optional[bool] = ..., requeued: _Optional[int] = ...) -> None: ...

class WorkStreamRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("item_id", "spec", "gpu_ids", "dep_values", "cancel", "revoke", "attempt", "dep_stored", "lend_cpu", "take_back_cpu")
    class DepValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    DEP_VALUES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEP_STORED_FIELD_NUMBER: _ClassVar[int]
    LEND_CPU_FIELD_NUMBER: _ClassVar[int]
    TAKE_BACK_CPU_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    spec: WorkSpec
    gpu_ids: _containers.RepeatedScalarFieldContainer[str]
    dep_values: _containers.ScalarMap[str, bytes]
    cancel: bool
    revoke: bool
    attempt: int
    dep_stored: _containers.RepeatedScalarFieldContainer[str]
    lend_cpu: bool
    take_back_cpu: bool
    def __init__(self, item_id: _Optional[str] = ..., spec: _Optional[_Union[WorkSpec, _Mapping]] = ..., gpu_ids: _Optional[_Iterable[str]] = ..., dep_values: _Optional[_Mapping[str, bytes]] = ..., cancel: _Optional[bool] = ..., revoke: _Optional[bool] = ..., attempt: _Optional[int] = ..., dep_stored: _Optional[_Iterable[str]] = ..., lend_cpu: _Optional[bool] = ..., take_back_cpu: _Optional[bool] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, items: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("node_id", "results", "seq", "want_ack")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    WANT_ACK_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    seq: int
    want_ack: bool
    def __init__(self, node_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., seq: _Optional[int] = ..., want_ack: _Optional[bool] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class AppendLogRequest(_message.Message):
    __slots__ = ("item_id", "data")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    data: bytes
    def __init__(self, item_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class AppendLogReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("id", "data", "node_id", "direct")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    data: bytes
    node_id: str
    direct: bool
    def __init__(self, id: _Optional[str] = ..., data: _Optional[bytes] = ..., node_id: _Optional[str] = ..., direct: _Optional[bool] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("id", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    offset: int
    def __init__(self, id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ShapeDemand(_message.Message):
    __slots__ = ("shape", "count")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    shape: Resources
    count: int
    def __init__(self, shape: _Optional[_Union[Resources, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class InfeasibleDemand(_message.Message):
    __slots__ = ("shape", "count", "reason")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    shape: Resources
    count: int
    reason: str
    def __init__(self, shape: _Optional[_Union[Resources, _Mapping]] = ..., count: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node_id", "node_type", "address", "is_head", "state", "total", "available", "labels", "registered_at", "last_heartbeat", "idle_since", "draining", "running", "preempt_at", "preempt_reason")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_HEAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    IDLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PREEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    PREEMPT_REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_type: str
    address: str
    is_head: bool
    state: str
    total: Resources
    available: Resources
    labels: _containers.ScalarMap[str, str]
    registered_at: float
    last_heartbeat: float
    idle_since: float
    draining: bool
    running: int
    preempt_at: float
    preempt_reason: str
    def __init__(self, node_id: _Optional[str] = ..., node_type: _Optional[str] = ..., address: _Optional[str] = ..., is_head: _Optional[bool] = ..., state: _Optional[str] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., available: _Optional[_Union[Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., registered_at: _Optional[float] = ..., last_heartbeat: _Optional[float] = ..., idle_since: _Optional[float] = ..., draining: _Optional[bool] = ..., running: _Optional[int] = ..., preempt_at: _Optional[float] = ..., preempt_reason: _Optional[str] = ...) -> None: ...

class GroupDemand(_message.Message):
    __slots__ = ("bundles", "strategy", "count")
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[Resources]
    strategy: str
    count: int
    def __init__(self, bundles: _Optional[_Iterable[_Union[Resources, _Mapping]]] = ..., strategy: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ClusterState(_message.Message):
    __slots__ = ("nodes", "now", "demand", "infeasible", "groups", "python_version", "store_dir", "store_key")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    INFEASIBLE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORE_DIR_FIELD_NUMBER: _ClassVar[int]
    STORE_KEY_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeState]
    now: float
    demand: _containers.RepeatedCompositeFieldContainer[ShapeDemand]
    infeasible: _containers.RepeatedCompositeFieldContainer[InfeasibleDemand]
    groups: _containers.RepeatedCompositeFieldContainer[GroupDemand]
    python_version: str
    store_dir: str
    store_key: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeState, _Mapping]]] = ..., now: _Optional[float] = ..., demand: _Optional[_Iterable[_Union[ShapeDemand, _Mapping]]] = ..., infeasible: _Optional[_Iterable[_Union[InfeasibleDemand, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupDemand, _Mapping]]] = ..., python_version: _Optional[str] = ..., store_dir: _Optional[str] = ..., store_key: _Optional[str] = ...) -> None: ...

class WatchDemandRequest(_message.Message):
    __slots__ = ("seen", "timeout_s")
    SEEN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    seen: str
    timeout_s: float
    def __init__(self, seen: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class WatchDemandReply(_message.Message):
    __slots__ = ("fingerprint", "demand", "groups")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    demand: _containers.RepeatedCompositeFieldContainer[ShapeDemand]
    groups: _containers.RepeatedCompositeFieldContainer[GroupDemand]
    def __init__(self, fingerprint: _Optional[str] = ..., demand: _Optional[_Iterable[_Union[ShapeDemand, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupDemand, _Mapping]]] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("id", "spec", "actor_attempt", "cancel", "resume")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: WorkSpec
    actor_attempt: int
    cancel: bool
    resume: bool
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[WorkSpec, _Mapping]] = ..., actor_attempt: _Optional[int] = ..., cancel: _Optional[bool] = ..., resume: _Optional[bool] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("id", "outcome", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: str
    result: ItemResult
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[str] = ..., result: _Optional[_Union[ItemResult, _Mapping]] = ...) -> None: ...

class CallRequests(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallRequest]
    def __init__(self, calls: _Optional[_Iterable[_Union[CallRequest, _Mapping]]] = ...) -> None: ...

class CallReplies(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[CallReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[CallReply, _Mapping]]] = ...) -> None: ...
