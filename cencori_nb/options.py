"""The options of a request, in one object: what ``chat`` and its twins were asked besides the
prompt.

The public functions (``chat``, ``achat``, ``stream``, ``astream``, ``map``, ``amap``,
``estimate``, the ``.cencori`` accessors) keep their keyword arguments; each builds one
:class:`ChatOptions` from them, once, and passes that down. Nothing below the public faces
spells the keyword list out again: a request is :meth:`ChatOptions.request`, a batch row's
call is :meth:`ChatOptions.call_kwargs`, a batch's identity is
:meth:`ChatOptions.fingerprint`.

Adding an option (``schema=``, image parts…): add the field here (default None), the keyword
to the public signatures, and carry it into :class:`~cencori_nb.types.ChatRequest` in
:meth:`ChatOptions.request`. A field added after the first nine is passed to an injected
``achat`` and counted in a batch's fingerprint only when set, so a custom ``achat`` that
does not know it keeps working and checkpoints written before it stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .types import ChatRequest

if TYPE_CHECKING:
    from .schemas import Schema

__all__ = ["ChatOptions", "parse_max_cost"]

Prompt = str | list[Any]  # text, messages, or text and images (types.ChatRequest.from_prompt)

# The options every call passes (an injected achat must accept them). Later fields are
# passed only when set; see the module docstring.
_ALWAYS = frozenset(
    {
        "model",
        "provider",
        "route",
        "system",
        "temperature",
        "max_tokens",
        "project",
        "cache",
        "retries",
    }
)
# Not part of what is asked, so not part of a batch's identity (a re-run with another
# limit or retry count resumes the same batch).
_NOT_IN_FINGERPRINT = frozenset({"cache", "retries", "max_cost_usd"})


def parse_max_cost(value: Decimal | float | str | None) -> Decimal | None:
    """``max_cost_usd`` as a Decimal, by the wallet's one rule for amounts (None stays None)."""
    if value is None:
        return None
    from .wallet import parse_amount

    return parse_amount(value, allow_zero=True, what="max_cost_usd")


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """Everything a request is asked besides its prompt; frozen, built once per public call.

    ``max_cost_usd`` is already parsed (:func:`parse_max_cost`); ``retries`` None means the
    transport's default.
    """

    model: str | None = None
    provider: str | None = None
    route: str = "auto"  # checked by the router: auto, byok or managed
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    project: str | None = None
    cache: bool = True
    retries: int | None = None
    max_cost_usd: Decimal | None = None
    # schema= (normalised by cencori_nb.schemas.as_schema): the answer must be JSON of it
    schema: Schema | None = None

    @classmethod
    def from_arguments(
        cls,
        *,
        max_cost_usd: Decimal | float | str | None = None,
        schema: Any = None,
        **options: Any,
    ) -> ChatOptions:
        """The options from a public function's keyword arguments, as the user gave them:
        ``max_cost_usd`` parsed (:func:`parse_max_cost`) and ``schema`` normalised
        (:func:`cencori_nb.schemas.as_schema`), here once for every public function."""
        if schema is not None:
            from .schemas import as_schema  # here: schemas imports pydantic, only when used

            schema = as_schema(schema)
        return cls(max_cost_usd=parse_max_cost(max_cost_usd), schema=schema, **options)

    @property
    def deterministic(self) -> bool:
        """Temperature 0 or unset: the same prompt gets the same answer (cacheable)."""
        return self.temperature is None or self.temperature == 0

    def request(self, prompt: Prompt, *, stream: bool = False) -> ChatRequest:
        """The :class:`ChatRequest` for ``prompt`` with these options."""
        return ChatRequest.from_prompt(
            prompt,
            system=self.system,
            model=self.model,
            provider=self.provider,
            route=self.route,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            stream=stream,
            project=self.project,
            cache=self.cache,
            max_cost_usd=self.max_cost_usd,
            schema=self.schema,
        )

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``achat(prompt, **kwargs)`` asking the same."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _ALWAYS or value is not None:
                out[f.name] = value
        return out

    def fingerprint(self) -> str:
        """What the answer depends on, as stable text (a batch's and a row's identity)."""
        import json

        data = {k: v for k, v in self.call_kwargs().items() if k not in _NOT_IN_FINGERPRINT}
        if self.schema is not None:  # the schema's content, not the Python object
            data["schema"] = self.schema.fingerprint
        return json.dumps(data, sort_keys=True, default=str)
