"""The schema's building blocks."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

# bounded: 10**23 passed, and overflowed in torch as an "unexpected" error (exit 1)
PositiveInt = Annotated[int, Field(gt=0, le=2**31 - 1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy's and sklearn's range
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Strict(BaseModel):
    # allow_inf_nan: `fit.lr: .inf` passed gt=0 and ended as a diverged training, exit 7
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, raw: Any) -> Any:
        """Lax mode reads `true` as 1 (`fit.ensemble: true` trained one model). Lax on the
        rest: Ray's search spaces hand numpy numbers."""
        for key, value in raw.items() if isinstance(raw, dict) else ():
            field = cls.model_fields.get(key)
            if field and isinstance(value, bool):
                types = _types(field.annotation)
                if bool not in types and types & {int, float}:
                    raise ValueError(f"{key}: a number, not {str(value).lower()}")
        return raw


def _types(annotation: Any) -> set:
    """The plain types an annotation (a union, Annotated, Literal) lets through."""
    args = get_args(annotation)
    if not args:
        return {annotation}
    return {t for a in args for t in _types(a)}
