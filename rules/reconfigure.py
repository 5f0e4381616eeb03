"""A running rule set swapped for a new one without losing what the old one knew.

A reload must not be a restart for the rules: an acknowledged fire alarm stays acknowledged, a latched one stays
latched, an escalation clock keeps its deadlines, and a rule that did not change keeps its state (a pending
``for``, an event window, a deadband, the instances it has fired). Pure, like ``rules.runtime``.

- The alarm book is carried over whole: every alarm, its trail sequence and its state. An alarm whose class the
  new config redefines takes the new definition; one whose class the new config no longer has keeps its old class
  until it ends (on a restart it would not be restored: a reload never drops a live alarm).
- A rule whose definition is unchanged keeps its compiled condition and its state. A changed or new rule starts
  fresh, but owns the alarms of its id that are still active, so it clears them when its condition is gone.
- What the rules have heard (latest readings, device states) and the bus flood state are kept.
"""

from __future__ import annotations

from rules.alarms import AlarmBook
from rules.escalation import AlarmClass
from rules.runtime import RulesRuntime, SiteRules


def reconfigured(old: RulesRuntime, cfg: SiteRules, *, now: float) -> RulesRuntime:
    """The runtime ``cfg`` describes, carrying ``old``'s alarms and the state of its unchanged rules."""
    new = RulesRuntime.from_config(cfg, started=now)
    classes: dict[str, AlarmClass] = {a.cls.name: a.cls for a in old.book.all()}
    classes.update(new.classes)  # the new definition of a class wins; a class gone keeps its old one
    new.book = AlarmBook.from_dict(old.book.to_dict(), classes)

    world, tz = old.engine.world, new.engine.world.tz
    world.tz = tz
    new.engine.world = world
    before = {state.rule.id: state for state in old.engine.states}
    for state in new.engine.states:
        prior = before.get(state.rule.id)
        if prior is not None and prior.rule == state.rule:
            state.when, state.clear_when = prior.when, prior.clear_when
            state.true_since, state.active, state.last_trigger = prior.true_since, prior.active, prior.last_trigger
    new.engine.restore_active([a.key for a in new.book.active()])

    new.offline = {d for d in old.offline if d in new.bus_of}
    new.suppressed = {bus: n for bus, n in old.suppressed.items() if bus in new.devices_on}
    new._published = old._published  # published events' ids are derived from this count: never reused
    return new
