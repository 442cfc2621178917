"""Field schemas: every field's name, type and role, in the one order all of adrank uses.

A schema lists the context fields first, then the item fields (``C = [0, m_C)``,
``I = [m_C, m)`` in the paper's notation), so kernels can cache the context part as a
prefix.  Each field occupies ``width`` consecutive *slots* of an encoded row: one for
categorical and numeric fields, ``max_values`` for multi-valued fields (padding = -1).
The field vector of a multi-valued field is the mean of its values' embeddings (R_ff = 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

FieldType = Literal["categorical", "numeric", "multi"]
Role = Literal["context", "item"]
Target = Literal["binary", "regression"]

FIELD_TYPES = ("categorical", "numeric", "multi")
ROLES = ("context", "item")


class SchemaError(ValueError):
    """A schema that cannot be used: names the field and what is wrong."""


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType = "categorical"
    role: Role = "context"
    max_values: int = 1  # slots for a multi-valued field; 1 otherwise

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise SchemaError(f"field {self.name!r}: type must be one of {FIELD_TYPES}, got {self.type!r}")
        if self.role not in ROLES:
            raise SchemaError(f"field {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.type != "multi" and self.max_values != 1:
            raise SchemaError(f"field {self.name!r}: only multi-valued fields take max_values > 1")
        if self.max_values < 1:
            raise SchemaError(f"field {self.name!r}: max_values must be >= 1")

    @property
    def width(self) -> int:
        return self.max_values


@dataclass(frozen=True)
class Schema:
    name: str
    fields: tuple[Field, ...]
    target: Target = "binary"
    label: str = "label"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise SchemaError(f"schema {self.name!r}: duplicate field names")
        roles = [f.role for f in self.fields]
        if "item" in roles and "context" in roles[roles.index("item"):]:
            raise SchemaError(f"schema {self.name!r}: context fields must come before item fields")
        if self.target not in ("binary", "regression"):
            raise SchemaError(f"schema {self.name!r}: target must be 'binary' or 'regression'")

    # --- sizes -------------------------------------------------------------------------
    @property
    def m(self) -> int:
        return len(self.fields)

    @property
    def m_context(self) -> int:
        return sum(f.role == "context" for f in self.fields)

    @property
    def context_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.role == "context")

    @property
    def item_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.role == "item")

    @property
    def slot_offsets(self) -> list[int]:
        """``slot_offsets[f]:slot_offsets[f+1]`` are field f's slots; last entry = total slots."""
        out = [0]
        for f in self.fields:
            out.append(out[-1] + f.width)
        return out

    @property
    def n_slots(self) -> int:
        return self.slot_offsets[-1]

    @property
    def n_context_slots(self) -> int:
        return self.slot_offsets[self.m_context]

    def index(self, name: str) -> int:
        for i, f in enumerate(self.fields):
            if f.name == name:
                return i
        raise SchemaError(f"schema {self.name!r} has no field {name!r}")

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "target": self.target,
            "label": self.label,
            "fields": [asdict(f) for f in self.fields],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        try:
            fields = tuple(Field(**f) for f in d["fields"])
            return cls(
                name=d["name"],
                fields=fields,
                target=d.get("target", "binary"),
                label=d.get("label", "label"),
                meta=d.get("meta", {}),
            )
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"malformed schema: {exc}") from exc
