"""The OpenAPI 3.1 description: valid, public, and true: schemathesis sends requests generated from it
(valid and invalid ones) and checks every answer against what it documents (status codes, content
types, response schemas, headers), and that no request makes the API fail."""
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from webapp import apikeys
from webapp.audit import Actor


@pytest.fixture
def key(app, make, portal):
    make.server(portal, from_address="helpdesk@example.com")
    with app.app_context():
        return apikeys.create(Actor("tests"), portal, "Schemathesis")[1]


@pytest.fixture
def api_schema(app, key):
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


def test_the_description_is_public_and_names_every_route_of_the_api(app, client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert "Set-Cookie" not in response.headers
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    documented = {path.replace("{", "<").replace("}", ">") for path in document["paths"]}
    routed = {rule.rule.replace("<id:", "<") for rule in app.url_map.iter_rules()
              if rule.endpoint.startswith("api.") and rule.endpoint != "api.openapi"}
    assert documented == routed
    submission = document["components"]["schemas"]["Submission"]
    assert {"from", "to", "cc", "bcc", "subject", "text", "html", "reply_to", "headers", "attachments"} <= set(
        submission["properties"])
    assert json.loads(json.dumps(document)) == document


def test_the_description_is_a_valid_openapi_3_1_document(api_schema):
    """schemathesis refuses to load a document that does not validate against the OpenAPI 3.1 schema."""
    api_schema.validate()
    assert {operation.ok().label for operation in api_schema.get_all_operations()} == {
        "POST /api/v1/portals/{slug}/messages", "GET /api/v1/portals/{slug}/messages/{message_id}"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_what_the_description_says(api_schema, key, mode):
    """Requests that fit the description and requests that do not, for every operation (schemathesis'
    pytest plugin does not run under this pytest, so hypothesis drives its strategies directly)."""
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(mode, path_parameters={"slug": "help"}))
        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def conforms(case):
            # A description cannot say which addresses email-validator accepts or which From addresses the
            # portal allows: a message that fits it may still be refused (422, naming the field).
            excluded = [positive_data_acceptance] if operation.method == "post" else []
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, excluded_checks=excluded)

        conforms()


def test_a_stored_message_and_its_status_match_the_description(api_schema, key):
    auth = {"Authorization": f"Bearer {key}"}
    post = api_schema["/api/v1/portals/{slug}/messages"]["POST"]
    body = {"to": ["Ann <ann@example.org>"], "subject": "Hello", "text": "Hi", "html": "<p>Hi</p>",
            "attachments": [{"filename": "a.txt", "content": "aGkK"}]}
    accepted = post.Case(path_parameters={"slug": "help"}, body=body, media_type="application/json",
                         headers={"Idempotency-Key": "k-1"}).call_and_validate(headers=auth)
    assert accepted.status_code == 202
    get = api_schema["/api/v1/portals/{slug}/messages/{message_id}"]["GET"]
    status = get.Case(path_parameters={"slug": "help", "message_id": accepted.json()["id"]}).call_and_validate(
        headers=auth)
    assert status.status_code == 200 and status.json()["id"] == accepted.json()["id"]
