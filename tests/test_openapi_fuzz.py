"""schemathesis over every operation of the HTTP mode's OpenAPI schema: no answer is a 5xx, and the server
stays up. Bounded (a fixed number of examples per operation, derandomized, a time budget) so that it is quick
and repeatable.

The cases come from schemathesis's Hypothesis strategies (`APIOperation.as_strategy`, valid and invalid
ones) rather than its pytest plugin, whose loader from a fixture (`schemathesis.pytest.from_fixture`) fails
on pytest 9.2: it sets `Function._nodeid`, which pytest no longer has."""

import time
import warnings

import httpx
import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from .conftest import module_server

EXAMPLES_PER_OPERATION = 50
# 6 s on 2 busy cores for the 7 operations (after the server's start); past the budget the operations left are skipped,
# with a warning, rather than the suite slowed down.
TIME_BUDGET_SECONDS = 60


class _OutOfTime(Exception):
    pass


# MAX_AUDIO_SECONDS, so that uploads also go through the reading of their container's stated duration.
fuzzed_server = module_server({"MAX_UPLOAD_MB": "1", "NUM_THREADS": "1", "MAX_AUDIO_SECONDS": "5"})


def test_no_operation_answers_a_server_error_and_the_server_stays_up(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    schema.config.update(base_url=fuzzed_server.url, request_timeout=30)
    # The transcription routes first: they take the most input, so they matter most if time runs out.
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.method != "post")
    labels = [operation.label for operation in operations]
    assert "POST /transcribe" in labels and "POST /v1/audio/transcriptions" in labels
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    failures, skipped = [], []
    for operation in operations:
        if time.monotonic() > deadline:
            skipped.append(operation.label)
            continue
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
                             suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
        @hypothesis.given(case=cases)
        def answers_without_a_server_error(case):
            if time.monotonic() > deadline:
                raise _OutOfTime
            case.call_and_validate(checks=[not_a_server_error])

        try:
            answers_without_a_server_error()
        except _OutOfTime:
            skipped.append(f"{operation.label} (in part)")
        except Exception as error:  # every operation is tried; each failure is reported below
            failures.append(f"{operation.label}: {error}")
    if skipped:
        warnings.warn(f"fuzzing past its {TIME_BUDGET_SECONDS} s budget: skipped {', '.join(skipped)}", stacklevel=1)
    assert not failures, "\n\n".join(failures)
    assert fuzzed_server.process.poll() is None
    assert httpx.get(f"{fuzzed_server.url}/healthcheck", timeout=5).text == "1"
