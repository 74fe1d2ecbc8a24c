"""One exception family; the CLI turns it into one line on stderr and an exit code."""


class MailprovError(Exception):
    """Something mailprov was asked to do did not work (exit 1)."""

    exit_code = 1


class UsageError(MailprovError):
    """Bad input or usage: the message names the field or option and the expected form (exit 2)."""

    exit_code = 2


class SpecError(UsageError):
    """mail.yml is invalid; `field` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        self.field = field
        self.message = message
        self.line = line
        self.loc: tuple[int | str, ...] = ()
        where = f" (line {line})" if line else ""
        prefix = f"{field}{where}: " if field else (f"line {line}: " if line else "")
        super().__init__(f"mail.yml: {prefix}{message}")


class RenderError(MailprovError):
    """Rendering failed (a template bug, not user input)."""


class ApplyError(MailprovError):
    """The playbook run failed."""


class LabError(MailprovError):
    """The lab could not do what was asked."""
