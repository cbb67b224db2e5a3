"""The one error type users see: a one-line message saying what is wrong and what to do."""


class ShiftlabError(ValueError):
    """Bad input to shiftlab (a shape, a name, a file, a shift). The CLI prints it on one
    line and exits with status 2; library callers can catch it as a ``ValueError``."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """``err`` as one line for a :class:`ShiftlabError` message: its first line (at most
    ``limit`` characters), prefixed by its type unless it is a ``ShiftlabError`` already.

    >>> one_line(RuntimeError("shapes do not match\\nlong torch trace"))
    'RuntimeError: shapes do not match'
    >>> one_line(ShiftlabError("bad shift")), one_line(KeyError())
    ('bad shift', 'KeyError')
    """
    text = str(err).strip()
    if not text:
        return type(err).__name__
    first = text.splitlines()[0][:limit]
    return first if isinstance(err, ShiftlabError) else f"{type(err).__name__}: {first}"


def run_model(model, x, who: str = "the model"):
    """``model(x)``; any error other than a :class:`ShiftlabError` becomes one line saying
    that ``who`` cannot run on inputs of ``x``'s shape, and why."""
    try:
        return model(x)
    except ShiftlabError:
        raise
    except Exception as err:
        raise ShiftlabError(f"{who} cannot run on inputs of shape {tuple(x.shape)}: "
                            f"{one_line(err)}") from None
