"""Which exceptions are the user's input (exit status 2 with one line) and which are bugs."""

from __future__ import annotations

from fundus_lit.core.errors import ConfigError, DataError
from fundus_lit.core.resolve import ModelNotFoundError


def user_error(err: BaseException | None) -> BaseException | None:
    """The bad-input error behind ``err``; jsonargparse wraps errors raised while instantiating."""
    while err is not None:
        if isinstance(err, (DataError, ConfigError, ModelNotFoundError)):
            return err
        err = err.__cause__ or err.__context__
    return None
