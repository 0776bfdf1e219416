"""Models carrying text the schema would refuse, to test a renderer's own escaping.

The payload schema keeps control characters, quotes and the like out of ids (and control
characters out of all text), but every renderer must escape for its syntax on its own.
``with_text`` takes a model parsed from a valid body holding a placeholder and returns the
same model with the placeholder replaced by hostile text everywhere: what a renderer would
see if a check upstream were ever relaxed.
"""
import dataclasses

PLACEHOLDER = "PLACEHOLDER"


def with_text(model, text, placeholder=PLACEHOLDER):
    if isinstance(model, str):
        return model.replace(placeholder, text)
    if isinstance(model, tuple) and not hasattr(model, "_fields"):
        return tuple(with_text(item, text, placeholder) for item in model)
    if isinstance(model, dict):
        return {with_text(k, text, placeholder): with_text(v, text, placeholder)
                for k, v in model.items()}
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        return dataclasses.replace(model, **{
            f.name: with_text(getattr(model, f.name), text, placeholder)
            for f in dataclasses.fields(model) if f.init})
    return model
