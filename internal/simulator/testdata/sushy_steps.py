#!/usr/bin/python3
"""Drive one Redfish system with OpenStack's sushy (Ironic's Redfish client), step by step.

Usage: sushy_steps.py '<json config>'
  config: url, user, password, system (its @odata.id), steps: a list of
          "insert <image URL>", "eject", "boot_cd_once", "on", "force_off".

Prints one JSON object: for each step, the system as sushy reads it afterwards (power, boot
override, virtual CD). Any exception fails the script (exit status 1, traceback on stderr): a
step the BMC refuses is a failure.
"""

import json
import logging
import sys

import sushy
from sushy import auth as sushy_auth


def value(v):
    """An enum's value, or v itself (None stays None)."""
    return getattr(v, "value", v)


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = json.loads(sys.argv[1])
    root = sushy.Sushy(cfg["url"], verify=False,
                       auth=sushy_auth.BasicAuth(username=cfg["user"], password=cfg["password"]))
    system = root.get_system(cfg["system"])
    cd = None
    out = {"steps": []}
    for step in cfg["steps"]:
        verb, _, arg = step.partition(" ")
        if verb in ("insert", "eject") and cd is None:
            mgr = system.managers[0]
            cd = mgr.virtual_media.get_member(sorted(mgr.virtual_media.members_identities)[0])
        if verb == "insert":
            cd.insert_media(arg, inserted=True, write_protected=True)
        elif verb == "eject":
            cd.eject_media()
        elif verb == "boot_cd_once":
            system.set_system_boot_options(sushy.BOOT_SOURCE_TARGET_CD, enabled=sushy.BOOT_SOURCE_ENABLED_ONCE)
        elif verb == "on":
            system.reset_system(sushy.RESET_ON)
        elif verb == "force_off":
            system.reset_system(sushy.RESET_FORCE_OFF)
        else:
            raise ValueError("unknown step " + step)
        system.refresh()
        seen = {"step": verb, "power": value(system.power_state), "boot_target": value(system.boot.target),
                "boot_enabled": value(system.boot.enabled)}
        if cd is not None:
            cd.refresh()
            seen["media_image"], seen["media_inserted"] = cd.image, cd.inserted
        out["steps"].append(seen)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
