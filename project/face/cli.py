"""Bare `key=value` Hydra overrides after an invoke task name: `invoke local trainer.gpus=2`.

Invoke has no variadic positional arguments, and rejects such tokens ("No idea what ... is!").
`accept_bare_overrides()` gives every task that declares an `overrides` list argument a parser
context whose flag table also recognises Hydra override tokens; each one is appended to that
task's `overrides` list. Flags still work anywhere (`invoke train --yes key=value`), and
`--overrides key=value` remains available. Imports only invoke: `invoke --list` stays instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from invoke import Collection, Exit
from invoke.parser import Argument, ParserContext
from invoke.vendor.lexicon import Lexicon

from project.core.errors import INTERRUPTED_EXIT, USER_ERROR_EXIT, UserError, interrupt_handled
from project.core.run_ref import is_run_token

OVERRIDES_ARG = "overrides"
OVERRIDES_FLAG = "--overrides"
# Hydra override grammar, the parts users type: key=value, +key=value, ++key=value, ~key[=value].
OVERRIDE_TOKEN = re.compile(r"^(?:(?:\+\+|\+|~)?[A-Za-z_][\w.@/-]*=.*|~[A-Za-z_][\w.@/-]*)$", re.S)

# A run or SageMaker job (a name or a path: project.core.run_ref), given bare after tasks with an optional
# `job` argument (or an endpoint's name, after those with an optional `name`: `invoke undeploy NAME`).
JOB_ARG = "job"
NAME_ARGS = (JOB_ARG, "name")

OVERRIDES_HELP = "Hydra overrides as bare key=value tokens, e.g. trainer.max_epochs=1 model=mlp"


def is_override(token: str) -> bool:
    return bool(OVERRIDE_TOKEN.match(token))


class _OverrideToken(Argument):
    """A one-off boolean 'flag' standing for one override token; setting it records the token."""

    def __init__(self, token: str, sink: Argument):
        super().__init__(name="override", kind=bool)
        self._token, self._sink = token, sink

    @property
    def value(self) -> Any:
        return True

    @value.setter
    def value(self, _: Any) -> None:
        self._sink.set_value(self._token)


class _OverrideFlags(Lexicon):
    # Set by _OverridesContext: task names (never a job name) and the optional `job` argument.
    task_names: frozenset[str] = frozenset()
    job_arg: Any = None
    context: Any = None  # the task's parser context: whether it still waits for a positional argument

    job_flag_seen: bool = False  # `--job`/`-j` given: its value is not a bare job name
    last_flag: Any = None  # the flag seen last: while it waits for its value, a token is that value

    def _awaits_value(self) -> bool:
        flag = self.last_flag
        return flag is not None and flag.takes_value and flag.raw_value is None

    def _is_job(self, key: object) -> bool:
        return (
            self.job_arg is not None
            and self.job_arg.value is None
            and not self.job_flag_seen
            and not self._awaits_value()  # `--sweep 261203-064821-b3c1`: the flag's value
            and isinstance(key, str)
            and key not in self.task_names
            and not key.startswith("-")
            and is_run_token(key, positionals_pending=bool(self.context and self.context.missing_positional_args))
        )

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and is_override(key)) or self._is_job(key)

    def __getitem__(self, key: str) -> Argument:
        if not super().__contains__(key) and is_override(key):
            return _OverrideToken(key, super().__getitem__(OVERRIDES_FLAG))
        if not super().__contains__(key) and self._is_job(key):
            return _JobToken(key, self.job_arg)
        argument: Argument = super().__getitem__(key)
        if argument is self.job_arg:
            object.__setattr__(self, "job_flag_seen", True)
        object.__setattr__(self, "last_flag", argument)
        return argument


class _JobToken(_OverrideToken):
    """`invoke fetch my-job`, `invoke deploy runs/my-run/`: an optional positional run or job (invoke
    only has required ones)."""

    @property
    def value(self) -> Any:
        return True

    @value.setter
    def value(self, _: Any) -> None:
        self._sink.value = self._token


class _OverridesContext(ParserContext):
    def __init__(
        self,
        name: str | None = None,
        aliases: Iterable[str] = (),
        args: Sequence[Argument] = (),
        task_names: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(name=name, aliases=aliases)
        self.flags = _OverrideFlags()
        for arg in args:
            self.add_arg(arg)
        # Lexicon turns attribute assignment into keys: set plain attributes directly.
        object.__setattr__(self.flags, "task_names", frozenset(task_names))
        object.__setattr__(self.flags, "context", self)
        for name_arg in NAME_ARGS:
            if name_arg in self.args and self.args[name_arg] not in self.positional_args:
                object.__setattr__(self.flags, "job_arg", self.args[name_arg])
                break


def _upgrade(context: ParserContext, task_names: frozenset[str]) -> ParserContext:
    if OVERRIDES_ARG not in context.args or isinstance(context, _OverridesContext):
        return context
    return _OverridesContext(context.name, context.aliases, list(context.args.values()), task_names)


def accept_bare_overrides() -> None:
    """Teach invoke's parser bare override tokens, for tasks with an `overrides` argument.

    invoke builds its parser from `Collection.to_contexts` of the collection it loaded from
    tasks.py (always a plain Collection: `Collection.from_module` does not keep subclasses), so
    this is the one place to hook. Idempotent; tasks without `overrides` are untouched.
    """
    if getattr(Collection.to_contexts, "accepts_bare_overrides", False):
        return
    plain = Collection.to_contexts

    def to_contexts(self: Collection, ignore_unknown_help: Any = None) -> list[ParserContext]:
        contexts = plain(self, ignore_unknown_help=ignore_unknown_help)
        names = frozenset(name for context in contexts for name in (context.name, *context.aliases) if name)
        return [_upgrade(context, names) for context in contexts]

    to_contexts.accepts_bare_overrides = True  # type: ignore[attr-defined]
    Collection.to_contexts = to_contexts  # type: ignore[method-assign]


# In requirements.txt but not in requirements-local.txt: what the AWS tasks, the sandbox and
# sweeps with Optuna import (the module names, as a ModuleNotFoundError gives them).
LAPTOP_ONLY_PACKAGES = frozenset(
    {"boto3", "botocore", "sagemaker", "localstack_client", "moto", "optuna", "s3transfer"}
)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError into `error: <one line>` on stderr and exit code 2, without a traceback."""
    try:
        yield
    except UserError as exc:
        raise Exit(f"error: {exc}", code=USER_ERROR_EXIT) from None
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in LAPTOP_ONLY_PACKAGES:
            raise
        # A training-only install (requirements-local.txt: a bare-metal box) runs
        # `invoke local`; the AWS tasks and the sandbox need the rest.
        raise Exit(
            f"error: this task needs {exc.name.partition('.')[0]}, which this Python lacks (a training-only "
            "install?): pip install -r requirements.txt",
            code=USER_ERROR_EXIT,
        ) from None
    except KeyboardInterrupt as exc:
        # A task that leaves something going raises KeyboardInterrupt(what, and how to end it).
        said = str(exc) or "nothing half-written was kept; run the task again to resume"
        interrupt_handled()
        raise Exit(f"interrupted: {said}", code=INTERRUPTED_EXIT) from None
