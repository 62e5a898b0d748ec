"""One root error type, a few meaningful subclasses. Library errors are translated at the seam."""


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class RetryableError(PipelineError):
    """A service is unreachable or busy; the same call may succeed later."""


class FatalError(PipelineError):
    """Configuration or input that retrying cannot fix (bad flags, lost retention)."""


class ServiceUnavailable(RetryableError):
    """A service stayed unreachable past --service-timeout: the command gives up (exit 3,
    docs/operations.md). A RetryableError still, so a caller that stops on a retryable
    error during shutdown treats it alike."""


class KafkaUnreachable(ServiceUnavailable):
    """Every broker unreachable past --service-timeout, seen by a client mid-run. Closing that
    client waits on the unreachable group coordinator (LeaveGroup, pending commits), so the
    command exits without closing it."""


class ConfigurationError(FatalError):
    """The operator's settings are wrong in a way no retry can fix (an unmigrated ledger,
    rules other than the pinned ones, a port already taken): exit 2, like a bad flag."""


class LedgerNotMigrated(ConfigurationError):
    """The ledger database lacks the schema this code needs: run `alembic upgrade head`."""


class InvariantViolation(PipelineError):
    """Something that must never happen did; stop before writing anything wrong."""


class OwnershipLost(InvariantViolation):
    """This instance no longer owns a partition (fenced by a newer owner generation)."""


class ServiceLocked(FatalError):
    """An embedded ClickHouse path is owned by another process."""


class PipelineMismatch(ConfigurationError):
    """The rules or the input log differ from what the pipeline id is pinned to in the
    ledger (contract §2, §3), or input the ledger has not read is gone: an operator
    decision (a new pipeline id, a backfill), never a retry. Exit code 2."""
