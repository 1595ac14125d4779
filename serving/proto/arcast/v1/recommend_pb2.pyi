from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("model", "version", "history", "k", "exclude", "beam_width", "include_seen", "ignore_unknown_items", "diversity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    BEAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_UNKNOWN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    history: _containers.RepeatedScalarFieldContainer[int]
    k: int
    exclude: _containers.RepeatedScalarFieldContainer[int]
    beam_width: int
    include_seen: bool
    ignore_unknown_items: bool
    diversity: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., history: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., exclude: _Optional[_Iterable[int]] = ..., beam_width: _Optional[int] = ..., include_seen: _Optional[bool] = ..., ignore_unknown_items: _Optional[bool] = ..., diversity: _Optional[float] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("item_id", "score", "codes", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    score: float
    codes: _containers.RepeatedScalarFieldContainer[int]
    title: str
    def __init__(self, item_id: _Optional[int] = ..., score: _Optional[float] = ..., codes: _Optional[_Iterable[int]] = ..., title: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("model", "version", "items")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    items: _containers.RepeatedCompositeFieldContainer[Recommendation]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ...) -> None: ...

class UserHistory(_message.Message):
    __slots__ = ("user_id", "history", "exclude")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: _containers.RepeatedScalarFieldContainer[int]
    exclude: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_id: _Optional[str] = ..., history: _Optional[_Iterable[int]] = ..., exclude: _Optional[_Iterable[int]] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("model", "version", "users", "k", "beam_width", "include_seen", "ignore_unknown_items", "diversity")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    BEAM_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_UNKNOWN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    users: _containers.RepeatedCompositeFieldContainer[UserHistory]
    k: int
    beam_width: int
    include_seen: bool
    ignore_unknown_items: bool
    diversity: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., users: _Optional[_Iterable[_Union[UserHistory, _Mapping]]] = ..., k: _Optional[int] = ..., beam_width: _Optional[int] = ..., include_seen: _Optional[bool] = ..., ignore_unknown_items: _Optional[bool] = ..., diversity: _Optional[float] = ...) -> None: ...

class UserRecommendations(_message.Message):
    __slots__ = ("user_id", "items")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[Recommendation]
    def __init__(self, user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("model", "version", "users")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    users: _containers.RepeatedCompositeFieldContainer[UserRecommendations]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., users: _Optional[_Iterable[_Union[UserRecommendations, _Mapping]]] = ...) -> None: ...
