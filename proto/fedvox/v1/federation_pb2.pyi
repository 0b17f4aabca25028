from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_UNSPECIFIED: _ClassVar[TaskType]
    TASK_TYPE_WAIT: _ClassVar[TaskType]
    TASK_TYPE_INIT: _ClassVar[TaskType]
    TASK_TYPE_TRAIN: _ClassVar[TaskType]
    TASK_TYPE_EVALUATE: _ClassVar[TaskType]
    TASK_TYPE_STOP: _ClassVar[TaskType]

class PayloadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_KIND_UNSPECIFIED: _ClassVar[PayloadKind]
    PAYLOAD_KIND_NONE: _ClassVar[PayloadKind]
    PAYLOAD_KIND_FULL: _ClassVar[PayloadKind]
    PAYLOAD_KIND_DELTA: _ClassVar[PayloadKind]
TASK_TYPE_UNSPECIFIED: TaskType
TASK_TYPE_WAIT: TaskType
TASK_TYPE_INIT: TaskType
TASK_TYPE_TRAIN: TaskType
TASK_TYPE_EVALUATE: TaskType
TASK_TYPE_STOP: TaskType
PAYLOAD_KIND_UNSPECIFIED: PayloadKind
PAYLOAD_KIND_NONE: PayloadKind
PAYLOAD_KIND_FULL: PayloadKind
PAYLOAD_KIND_DELTA: PayloadKind

class RegisterRequest(_message.Message):
    __slots__ = ("site_id", "num_examples", "info")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    num_examples: int
    info: _containers.ScalarMap[str, str]
    def __init__(self, site_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("federation_id", "heartbeat_interval_seconds", "max_chunk_bytes")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    heartbeat_interval_seconds: float
    max_chunk_bytes: int
    def __init__(self, federation_id: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("site_id",)
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    def __init__(self, site_id: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "type", "round", "global_digest", "global_size", "config_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: TaskType
    round: int
    global_digest: str
    global_size: int
    config_json: str
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[_Union[TaskType, str]] = ..., round: _Optional[int] = ..., global_digest: _Optional[str] = ..., global_size: _Optional[int] = ..., config_json: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task", "retry_after_seconds")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    retry_after_seconds: float
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("site_id", "digest", "offset")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    digest: str
    offset: int
    def __init__(self, site_id: _Optional[str] = ..., digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class SubmitHeader(_message.Message):
    __slots__ = ("site_id", "task_id", "round", "kind", "num_examples", "metrics", "digest", "size", "local_steps")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    task_id: str
    round: int
    kind: PayloadKind
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    digest: str
    size: int
    local_steps: int
    def __init__(self, site_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[PayloadKind, str]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., local_steps: _Optional[int] = ...) -> None: ...

class SubmitChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SubmitHeader
    chunk: SubmitChunk
    def __init__(self, header: _Optional[_Union[SubmitHeader, _Mapping]] = ..., chunk: _Optional[_Union[SubmitChunk, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("site_id", "task_id", "progress")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    task_id: str
    progress: float
    def __init__(self, site_id: _Optional[str] = ..., task_id: _Optional[str] = ..., progress: _Optional[float] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("abort",)
    ABORT_FIELD_NUMBER: _ClassVar[int]
    abort: bool
    def __init__(self, abort: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteStatus(_message.Message):
    __slots__ = ("site_id", "last_seen_unix", "alive", "num_examples", "current_task_id", "progress", "last_metrics", "info")
    class LastMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_METRICS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    last_seen_unix: float
    alive: bool
    num_examples: int
    current_task_id: str
    progress: float
    last_metrics: _containers.ScalarMap[str, float]
    info: _containers.ScalarMap[str, str]
    def __init__(self, site_id: _Optional[str] = ..., last_seen_unix: _Optional[float] = ..., alive: _Optional[bool] = ..., num_examples: _Optional[int] = ..., current_task_id: _Optional[str] = ..., progress: _Optional[float] = ..., last_metrics: _Optional[_Mapping[str, float]] = ..., info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "kind", "sites", "metrics", "global_digest", "duration_seconds")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    round: int
    kind: str
    sites: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    global_digest: str
    duration_seconds: float
    def __init__(self, round: _Optional[int] = ..., kind: _Optional[str] = ..., sites: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., global_digest: _Optional[str] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("federation_id", "phase", "completed_round", "total_rounds", "current_round", "current_results", "current_expected", "sites", "history", "global_digest", "strategy")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RESULTS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    phase: str
    completed_round: int
    total_rounds: int
    current_round: int
    current_results: int
    current_expected: int
    sites: _containers.RepeatedCompositeFieldContainer[SiteStatus]
    history: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    global_digest: str
    strategy: str
    def __init__(self, federation_id: _Optional[str] = ..., phase: _Optional[str] = ..., completed_round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., current_round: _Optional[int] = ..., current_results: _Optional[int] = ..., current_expected: _Optional[int] = ..., sites: _Optional[_Iterable[_Union[SiteStatus, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ..., global_digest: _Optional[str] = ..., strategy: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...
