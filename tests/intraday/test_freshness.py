"""The sample's day moves (listings arrive and sell through it) and simulate-ab's site compares what shoppers
see with nightly-only lists and with hourly ones, on the same page views, from the pipeline's own hours."""
import json

from lookalike.tools.cli import main as cli


def test_hourly_lists_show_fewer_pages_without_a_module_and_fewer_sold_items(served_night, capsys):
    _, _, config = served_night
    assert cli(["simulate-ab", "--freshness", "--config", str(config), "--format", "json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    nightly, hourly = result["nightly"], result["hourly"]
    assert result["listed"] > 0 and result["sold"] > 0
    assert nightly["views"] == hourly["views"] > 50  # the same page views under both policies
    assert nightly["no_module"] > 0 and hourly["no_module_share"] < nightly["no_module_share"]
    assert nightly["sold_slots"] > 0 and hourly["sold_slot_share"] < nightly["sold_slot_share"]
    assert cli(["simulate-ab", "--freshness", "--config", str(config)]) == 0  # the day moves once; the table
    assert "slots showing an item already sold" in capsys.readouterr().out
