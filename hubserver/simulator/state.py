"""How a simulated device changes its state (its StateFields) when it obeys a command.

Simple rules, enough for the catalogue's commands: a payload key naming a StateField sets it (``set_mode
{"mode": "tracking"}``); ``"toggle"`` flips the first on/off StateField; any other string sets the first
StateField whose choices contain it (``switch {"state": "on"}`` sets ``relay``); a lone number or boolean
sets the type's only StateField of that kind (``set_interval {"seconds": 60}`` sets ``report_interval``).
"""

from ..exceptions import ValidationError

ON_OFF = {"on", "off"}


def initial_state(device_type, rng=None):
    """The StateFields' defaults; with ``rng``, an on/off field (a relay) starts on or off at random, as a
    fleet of real plugs would."""
    state = {name: field.default for name, field in device_type._state_fields.items()}
    if rng is not None:
        for name, field in device_type._state_fields.items():
            if field.reported and _choices(field) == ON_OFF:
                state[name] = rng.choice(("on", "off"))
    return state


def _set(fields, state, changed, name, value):
    try:
        value = fields[name].validate(value)
    except ValidationError:
        return False
    state[name] = value
    changed[name] = value
    return True


def _choices(field):
    return {value for value, _ in field.choices or ()}


def apply_command(device_type, state, payload):
    """Apply ``payload`` to ``state`` in place; return the fields that changed, ``{name: new value}``."""
    fields = device_type._state_fields
    changed = {}
    if not isinstance(payload, dict):
        return changed
    for key, value in payload.items():
        if key in fields:
            _set(fields, state, changed, key, value)
            continue
        free = [name for name in fields if name not in changed]
        if value == "toggle":
            target = next((n for n in free if _choices(fields[n]) >= ON_OFF), None)
            if target is not None:
                _set(fields, state, changed, target, "off" if state.get(target) == "on" else "on")
        elif isinstance(value, str):
            target = next((n for n in free if value in _choices(fields[n])), None)
            if target is not None:
                _set(fields, state, changed, target, value)
        elif isinstance(value, (bool, int, float)):
            kinds = (bool,) if isinstance(value, bool) else (int, float)
            same_kind = [n for n in free if fields[n].value_type in kinds]
            if len(same_kind) == 1:
                _set(fields, state, changed, same_kind[0], value)
    return changed
