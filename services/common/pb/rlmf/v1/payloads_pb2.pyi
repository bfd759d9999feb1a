import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NewsItem(_message.Message):
    __slots__ = ("item_id", "ticker", "headline", "body", "url", "source_name", "published_at", "synthetic")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TICKER_FIELD_NUMBER: _ClassVar[int]
    HEADLINE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    ticker: str
    headline: str
    body: str
    url: str
    source_name: str
    published_at: _timestamp_pb2.Timestamp
    synthetic: bool
    def __init__(self, item_id: _Optional[str] = ..., ticker: _Optional[str] = ..., headline: _Optional[str] = ..., body: _Optional[str] = ..., url: _Optional[str] = ..., source_name: _Optional[str] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., synthetic: _Optional[bool] = ...) -> None: ...

class EnrichedNews(_message.Message):
    __slots__ = ("item", "summary", "sentiment", "label_probabilities", "model_name", "model_version", "latency_ms")
    class LabelProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    LABEL_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    item: NewsItem
    summary: str
    sentiment: float
    label_probabilities: _containers.ScalarMap[str, float]
    model_name: str
    model_version: str
    latency_ms: float
    def __init__(self, item: _Optional[_Union[NewsItem, _Mapping]] = ..., summary: _Optional[str] = ..., sentiment: _Optional[float] = ..., label_probabilities: _Optional[_Mapping[str, float]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class Bar(_message.Message):
    __slots__ = ("ticker", "start", "end", "open", "high", "low", "close", "volume")
    TICKER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    ticker: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float
    def __init__(self, ticker: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., open: _Optional[float] = ..., high: _Optional[float] = ..., low: _Optional[float] = ..., close: _Optional[float] = ..., volume: _Optional[float] = ...) -> None: ...

class FeaturesReady(_message.Message):
    __slots__ = ("ticker", "watermark", "feature_service")
    TICKER_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ticker: str
    watermark: _timestamp_pb2.Timestamp
    feature_service: str
    def __init__(self, ticker: _Optional[str] = ..., watermark: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_service: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("ticker", "decision_time", "action", "probabilities", "value", "explanation", "model_version", "amount", "fallback_reason")
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TICKER_FIELD_NUMBER: _ClassVar[int]
    DECISION_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    ticker: str
    decision_time: _timestamp_pb2.Timestamp
    action: str
    probabilities: _containers.ScalarMap[str, float]
    value: float
    explanation: str
    model_version: str
    amount: float
    fallback_reason: str
    def __init__(self, ticker: _Optional[str] = ..., decision_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action: _Optional[str] = ..., probabilities: _Optional[_Mapping[str, float]] = ..., value: _Optional[float] = ..., explanation: _Optional[str] = ..., model_version: _Optional[str] = ..., amount: _Optional[float] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("ticker", "decision_id", "fill_time", "quantity", "price", "cost")
    TICKER_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    FILL_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ticker: str
    decision_id: str
    fill_time: _timestamp_pb2.Timestamp
    quantity: float
    price: float
    cost: float
    def __init__(self, ticker: _Optional[str] = ..., decision_id: _Optional[str] = ..., fill_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantity: _Optional[float] = ..., price: _Optional[float] = ..., cost: _Optional[float] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("ticker", "quantity", "price")
    TICKER_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ticker: str
    quantity: float
    price: float
    def __init__(self, ticker: _Optional[str] = ..., quantity: _Optional[float] = ..., price: _Optional[float] = ...) -> None: ...

class PortfolioSnapshot(_message.Message):
    __slots__ = ("as_of", "cash", "positions", "net_worth", "buy_and_hold_net_worth", "model_version")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    CASH_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    NET_WORTH_FIELD_NUMBER: _ClassVar[int]
    BUY_AND_HOLD_NET_WORTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    cash: float
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    net_worth: float
    buy_and_hold_net_worth: float
    model_version: str
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cash: _Optional[float] = ..., positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ..., net_worth: _Optional[float] = ..., buy_and_hold_net_worth: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class MarketFeedback(_message.Message):
    __slots__ = ("ticker", "decision_time", "realised_time", "state", "action", "reward", "realised_return", "model_version", "probabilities", "value")
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TICKER_FIELD_NUMBER: _ClassVar[int]
    DECISION_TIME_FIELD_NUMBER: _ClassVar[int]
    REALISED_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    REALISED_RETURN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ticker: str
    decision_time: _timestamp_pb2.Timestamp
    realised_time: _timestamp_pb2.Timestamp
    state: str
    action: str
    reward: float
    realised_return: float
    model_version: str
    probabilities: _containers.ScalarMap[str, float]
    value: float
    def __init__(self, ticker: _Optional[str] = ..., decision_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., realised_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[str] = ..., action: _Optional[str] = ..., reward: _Optional[float] = ..., realised_return: _Optional[float] = ..., model_version: _Optional[str] = ..., probabilities: _Optional[_Mapping[str, float]] = ..., value: _Optional[float] = ...) -> None: ...

class ModelPromotion(_message.Message):
    __slots__ = ("student_version", "teacher_version", "promoted", "reason", "student_metrics", "teacher_metrics", "buy_and_hold_metrics", "failed_guards", "artifact_path", "window_start", "window_end", "sharpe_diff", "sharpe_diff_low", "sharpe_diff_high", "p_value", "confidence", "holdout_bars", "inputs_sha256", "torch_threads", "outcome", "ppo_iterations", "budget_cut", "stage", "shadow_bars", "shadow_sharpe_diff", "shadow_p_value")
    class StudentMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class TeacherMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BuyAndHoldMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STUDENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STUDENT_METRICS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_METRICS_FIELD_NUMBER: _ClassVar[int]
    BUY_AND_HOLD_METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILED_GUARDS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    SHARPE_DIFF_FIELD_NUMBER: _ClassVar[int]
    SHARPE_DIFF_LOW_FIELD_NUMBER: _ClassVar[int]
    SHARPE_DIFF_HIGH_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_BARS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    TORCH_THREADS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PPO_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_CUT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_BARS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARPE_DIFF_FIELD_NUMBER: _ClassVar[int]
    SHADOW_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    student_version: str
    teacher_version: str
    promoted: bool
    reason: str
    student_metrics: _containers.ScalarMap[str, float]
    teacher_metrics: _containers.ScalarMap[str, float]
    buy_and_hold_metrics: _containers.ScalarMap[str, float]
    failed_guards: _containers.RepeatedScalarFieldContainer[str]
    artifact_path: str
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    sharpe_diff: float
    sharpe_diff_low: float
    sharpe_diff_high: float
    p_value: float
    confidence: float
    holdout_bars: int
    inputs_sha256: str
    torch_threads: int
    outcome: str
    ppo_iterations: int
    budget_cut: bool
    stage: str
    shadow_bars: int
    shadow_sharpe_diff: float
    shadow_p_value: float
    def __init__(self, student_version: _Optional[str] = ..., teacher_version: _Optional[str] = ..., promoted: _Optional[bool] = ..., reason: _Optional[str] = ..., student_metrics: _Optional[_Mapping[str, float]] = ..., teacher_metrics: _Optional[_Mapping[str, float]] = ..., buy_and_hold_metrics: _Optional[_Mapping[str, float]] = ..., failed_guards: _Optional[_Iterable[str]] = ..., artifact_path: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sharpe_diff: _Optional[float] = ..., sharpe_diff_low: _Optional[float] = ..., sharpe_diff_high: _Optional[float] = ..., p_value: _Optional[float] = ..., confidence: _Optional[float] = ..., holdout_bars: _Optional[int] = ..., inputs_sha256: _Optional[str] = ..., torch_threads: _Optional[int] = ..., outcome: _Optional[str] = ..., ppo_iterations: _Optional[int] = ..., budget_cut: _Optional[bool] = ..., stage: _Optional[str] = ..., shadow_bars: _Optional[int] = ..., shadow_sharpe_diff: _Optional[float] = ..., shadow_p_value: _Optional[float] = ...) -> None: ...

class ShadowDecision(_message.Message):
    __slots__ = ("decision", "teacher_version", "teacher_action", "shadow_return", "live_return", "shadow_net_worth", "live_net_worth", "shadow_bar")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ACTION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_RETURN_FIELD_NUMBER: _ClassVar[int]
    LIVE_RETURN_FIELD_NUMBER: _ClassVar[int]
    SHADOW_NET_WORTH_FIELD_NUMBER: _ClassVar[int]
    LIVE_NET_WORTH_FIELD_NUMBER: _ClassVar[int]
    SHADOW_BAR_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    teacher_version: str
    teacher_action: str
    shadow_return: float
    live_return: float
    shadow_net_worth: float
    live_net_worth: float
    shadow_bar: int
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., teacher_version: _Optional[str] = ..., teacher_action: _Optional[str] = ..., shadow_return: _Optional[float] = ..., live_return: _Optional[float] = ..., shadow_net_worth: _Optional[float] = ..., live_net_worth: _Optional[float] = ..., shadow_bar: _Optional[int] = ...) -> None: ...
