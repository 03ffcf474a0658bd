"""Schemathesis against the service's own OpenAPI schema: no 5xx, no schema violations.

Bounded: a fixed number of generated requests per operation, derandomised, in-process.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from service.api.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 25
# Names of models and profiles are validated against the registries (a 422 that lists the
# valid ones), which a JSON schema cannot express, so "schema-valid data is accepted" is not
# checked; everything about the responses is.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.negative_data_rejection,
]


def test_no_server_errors_and_responses_match_the_schema(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "fuzz"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()
        checked.append(operation.label)
    assert len(checked) >= 15, checked
