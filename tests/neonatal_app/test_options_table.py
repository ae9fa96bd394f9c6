"""The `budget` options table in Slicer: a table fetched before an admin's edit is no edit of its own.

The plugin sends its whole options table with every Next Sample, as it was served by /info; an annotator
whose Slicer still shows the values from before an admin changed them is neither refused (auth on) nor
reverts the admin's change (auth off). Only values changed in the table count as edits.
"""

from __future__ import annotations

import pytest

from strategies.annotate.state import open_state
from strategies.annotate.users import UserStore

PASSWORD = "correct horse battery"


@pytest.fixture()
def studies(served_copy, synth_root, tmp_path):
    return served_copy(synth_root, tmp_path)


def _table(client, headers=None) -> dict:
    """What the plugin sends with Next Sample: the options table from /info (a drop-down as its current value)."""
    config = client.get("/info/", headers=headers or {}).json()["strategies"]["budget"]["config"]
    return {k: v[0] if isinstance(v, list) else v for k, v in config.items()}


def _settings(client, headers=None) -> dict:
    return client.get("/info/", headers=headers or {}).json()["strategy_settings"]


def test_a_stale_table_does_not_revert_an_admins_edit_without_auth(inprocess_app, studies):
    with inprocess_app(studies) as (client, _app):
        stale = _table(client)  # the annotator's Slicer fetched the table here
        edit = {**_table(client), "client_id": "admin", "budget_dispersion": 0.5}
        assert client.post("/activelearning/budget", json=edit).status_code == 200
        assert _settings(client)["budget_dispersion"] == 0.5

        r = client.post("/activelearning/budget", json={**stale, "client_id": "ann"})
        assert r.status_code == 200 and r.json()["id"]
        assert _settings(client)["budget_dispersion"] == 0.5

        # a value changed in a stale table is an edit, applied alone: the other stale values revert nothing
        changed = {**stale, "client_id": "ann2", "budget_margin": 0.2}
        assert client.post("/activelearning/budget", json=changed).status_code == 200
        s = _settings(client)
        assert s["budget_margin"] == 0.2 and s["budget_dispersion"] == 0.5

        # another admin changes the dispersion; the first admin's table still names the revision before
        # their own edit: their next Next Sample does not re-apply 0.5 over it
        later = {**_table(client), "client_id": "admin2", "budget_dispersion": 0.25}
        assert client.post("/activelearning/budget", json=later).status_code == 200
        assert client.post("/activelearning/budget", json=edit).status_code == 200
        assert _settings(client)["budget_dispersion"] == 0.25


def test_a_stale_table_is_no_edit_for_an_annotator_with_auth(inprocess_app, snapshot, studies):
    users = UserStore(open_state(studies))
    users.add("root", "admin", PASSWORD)
    users.add("ann", "annotator", PASSWORD)
    with inprocess_app(studies, {"auth": "local"}) as (client, _app):

        def login(name: str) -> dict[str, str]:
            token = client.post("/auth/token", data={"username": name, "password": PASSWORD}).json()
            return {"Authorization": f"{token['token_type']} {token['access_token']}"}

        root, ann = login("root"), login("ann")
        stale = _table(client, ann)
        edit = {**_table(client, root), "budget_dispersion": 0.5}
        assert client.post("/activelearning/budget", json=edit, headers=root).status_code == 200

        r = client.post("/activelearning/budget", json=stale, headers=ann)
        assert r.status_code == 200, r.text
        assert r.json()["id"] and _settings(client, root)["budget_dispersion"] == 0.5

        before = snapshot(studies)
        r = client.post("/activelearning/budget", json={**stale, "budget_margin": 0.2}, headers=ann)
        assert r.status_code == 403 and "budget_margin" in r.json()["detail"], r.text
        assert "budget_dispersion" not in r.json()["detail"]
        assert {k: v for k, v in snapshot(studies).items() if not k.endswith("-shm")} == {
            k: v for k, v in before.items() if not k.endswith("-shm")}
