"""The database-backed Next Sample hands out what the pure planner plans (same config + seed = same plan)."""

from __future__ import annotations

from strategies.annotate.ledger import budget_config
from strategies.plan.budget import plan_budget


def test_annotators_on_a_fresh_study_set_get_the_budget_plan(inprocess_app, served_copy, synth_root, tmp_path):
    studies = served_copy(synth_root, tmp_path)
    conf = {"budget_total_slices": "40", "budget_dispersion": "0.33", "budget_axis": "random", "seed": "5"}
    with inprocess_app(studies, conf) as (client, app):
        handed = []
        for k in range(12):
            a = client.post("/activelearning/budget", json={"client_id": f"annotator-{k}"}).json()
            if not a:
                break
            handed += [(x["image"], x["axis"], tuple(x["indices"])) for x in a["assignment"]]
        plan = plan_budget(app.service.entries(), budget_config(app.ledger.settings()))
    planned = [(x.image, x.axis, tuple(x.indices)) for x in plan.assignments]
    assert handed == planned
    assert sum(len(i) for _, _, i in handed) == plan.spent > 30
