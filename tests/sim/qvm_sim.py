#!/usr/bin/python3 -I
"""dom0 tool stand-ins for the simulated Qubes (tests/sim/README.md, "dom0").

One program, called by the name of the tool it stands in for (symlinks in dom0's /usr/bin):
qvm-ls, qvm-prefs, qvm-volume, qvm-pool, qvm-block, qvm-start, qvm-shutdown, qvm-run,
qvm-features, qvm-tags. The command lines each accepts are modelled on the argparse definitions
of QubesOS/qubes-core-admin-client qubesadmin/tools/ (tags v4.2.18 and v4.3.34; where they differ
the sim accepts only what BOTH accept), the behaviour behind them on QubesOS/qubes-core-admin
(v4.2.39, v4.3.50): qubes/storage/reflink.py for volumes, qubes/ext/block.py for attaching.
Nothing here is upstream code; it is written from reading it.

Every call is appended to $QUBES_SIM_DOM0_CALLS (default STATE/dom0-calls.jsonl) as one JSON
array of argv per line, before it is parsed.
"""

import argparse
import contextlib
import fcntl
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time

STATE_FILE = "/etc/qubes-sim/state"      # in dom0's mount namespace: the sim's STATE path
POOL = {"name": "varlibqubes", "driver": "file-reflink", "dir_path": "/var/lib/qubes",
        "revisions_to_keep": "1", "ephemeral_volatile": "False"}
# qubes/storage/__init__.py Storage.AVAILABLE_FRONTENDS (v4.3.50): xvdi.. then xvdaa..
FRONTENDS = ["xvd" + c for c in "ijklmnopqrstuvwxyz"] + [
    "xvd" + c + d for c in "abcdefghijklmnopqrstuvwxyz" for d in "abcdefghijklmnopqrstuvwxyz"]
BOOL_TRUE = ("1", "true", "yes", "on")      # qubes/property.py bool()
BOOL_FALSE = ("0", "false", "no", "off", "")
VM_NAME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]*\Z")
# property type: how a value is parsed when set and printed when got
PROP_TYPES = {
    "label": "label", "template": "vm", "netvm": "vm", "default_dispvm": "vm",
    "memory": "int", "maxmem": "int", "vcpus": "int", "qid": "int",
    "backup_timestamp": "int", "include_in_backups": "bool", "autostart": "bool",
    "provides_network": "bool", "template_for_dispvms": "bool", "default_user": "str",
    "virt_mode": "str", "kernel": "str", "klass": "str", "name": "str", "uuid": "str",
}
LABELS = ("red", "orange", "yellow", "green", "gray", "blue", "purple", "black")


class QubesError(Exception):
    """A runtime error the real tools print as 'Error: ...' / 'PROG: error: ...' (exit 1)."""


# ------------------------------------------------------------------------------------------------
# State store (the sim's qubes.xml)
# ------------------------------------------------------------------------------------------------

def sim_state():
    env = os.environ.get("QUBES_SIM_STATE")
    if env:
        return env
    with open(STATE_FILE, encoding="utf-8") as f:
        return f.read().strip()


class Store:
    """STATE/dom0sim/qubes.json under an exclusive lock for the whole call (like qubesd's lock)."""

    def __init__(self, state):
        self.state = state
        self.path = os.path.join(state, "dom0sim", "qubes.json")
        self.lockf = open(os.path.join(state, "dom0sim", "qubes.lock"), "a+")
        fcntl.flock(self.lockf, fcntl.LOCK_EX)
        with open(self.path, encoding="utf-8") as f:
            self.data = json.load(f)
        self.qubes = self.data["qubes"]

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def close(self):
        self.lockf.close()

    def qube(self, name):
        return self.qubes[name]

    def is_running(self, name):
        q = self.qubes[name]
        return q["klass"] == "AdminVM" or q["state"] == "Running"


def prop_value(store, name, prop):
    """(value or None, is_default); KeyError when the qube has no such property."""
    q = store.qube(name)
    if prop == "name":
        return name, False
    if prop == "klass":
        return q["klass"], False
    if prop in q["prefs"]:
        return q["prefs"][prop], False
    if prop in q.get("defaults", {}):
        return q["defaults"][prop], True
    raise KeyError(prop)


def prop_str(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    return str(value)


def parse_prop(store, prop, value):
    kind = PROP_TYPES.get(prop, "str")
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise QubesError(f"Invalid value for property {prop}: {value!r}") from None
    if kind == "bool":
        if value.lower() in BOOL_TRUE:
            return True
        if value.lower() in BOOL_FALSE:
            return False
        raise QubesError(f"Invalid value for property {prop}: {value!r}")
    if kind == "vm":
        if value == "":
            return None
        if value not in store.qubes:
            raise QubesError(f"No such domain: {value!r}")
        return value
    if kind == "label":
        if value not in LABELS:
            raise QubesError(f"No such label: {value!r}")
    return value


# ------------------------------------------------------------------------------------------------
# Parsers: qubesadmin/tools/__init__.py QubesArgumentParser, VmNameAction, VmNameGroup
# ------------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Common options of QubesArgumentParser; VMNAME resolved against the store after parsing."""

    def __init__(self, vmname_nargs=None, **kwargs):
        super().__init__(add_help=False, **kwargs)
        self._vmname_nargs = vmname_nargs
        self.add_argument("--verbose", "-v", action="count")
        self.add_argument("--quiet", "-q", action="count")
        self.add_argument("--force-root", action="store_true", default=False,
                          help=argparse.SUPPRESS)
        self.add_argument("--help", "-h", action="help")
        self.add_argument("--version", action="version", version="qubes-sim")
        if vmname_nargs in ("*", "+"):
            group = self.add_mutually_exclusive_group(required=(vmname_nargs == "+"))
            group.add_argument("--all", action="store_true", dest="all_domains")
            self.add_argument("--exclude", action="append", default=[])
            group.add_argument("VMNAME", nargs="*", default=[])
        elif vmname_nargs is not None:
            self.add_argument("VMNAME", nargs=vmname_nargs)
        self.set_defaults(verbose=1, quiet=0)

    def error_runtime(self, message, code=1):
        self.exit(code, f"{self.prog}: error: {message}\n")


def resolve_domains(parser, args, store, nargs):
    """VmNameAction.parse_qubes_app: unknown names are a usage error (exit 2)."""
    if getattr(args, "all_domains", False):
        return [n for n in sorted(store.qubes) if store.qube(n)["klass"] != "AdminVM"
                and n not in args.exclude]
    if getattr(args, "exclude", None):
        parser.error("--exclude can only be used with --all")
    names = args.VMNAME
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        if nargs in ("*", "+") and any(c in name for c in "*?[!]"):
            out += [n for n in sorted(store.qubes) if fnmatch.fnmatch(n, name) and n not in out]
        elif name not in out:
            out.append(name)
    for name in out:
        if name not in store.qubes:
            parser.error(f"no such domain: {name!r}")
    return out


def print_table(rows):
    """qubesadmin.tools.print_table: `column -t -s US`."""
    us = "\x1f"
    text = "\n".join(us.join(r) for r in rows) + "\n"
    sys.stdout.flush()
    subprocess.run(["column", "-t", "-s", us], input=text.encode(), check=False)


# ------------------------------------------------------------------------------------------------
# qvm-ls (qvm_ls.py; options of v4.2.18, all also in v4.3.34)
# ------------------------------------------------------------------------------------------------

LS_FORMATS = {
    "simple": ("name", "state", "class", "label", "template", "netvm"),
    "network": ("name", "state", "netvm", "ip", "ipback", "gateway"),
    "kernel": ("name", "state", "class", "template", "kernel", "kernelopts"),
    "full": ("name", "state", "class", "label", "qid", "xid", "uuid"),
    "disk": ("name", "state", "disk", "priv-curr", "priv-max", "priv-used", "root-curr",
             "root-max", "root-used"),
}


def ls_parser():
    p = Parser(vmname_nargs="*", prog="qvm-ls")
    p.add_argument("--help-columns", action="store_true")
    p.add_argument("--help-formats", action="store_true")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--format", "-o", metavar="FORMAT", choices=LS_FORMATS.keys(),
                     default="simple")
    fmt.add_argument("--fields", "-O", metavar="FIELD,...")
    p.add_argument("--tags", nargs="+", metavar="TAG")
    for st in ("running", "paused", "halted"):
        p.add_argument(f"--{st}", action="store_true")
    p.add_argument("--raw-data", action="store_true")
    p.add_argument("--tree", "-t", action="store_const", const="tree")
    p.add_argument("--spinner", action="store_true", dest="spinner")
    p.add_argument("--no-spinner", action="store_false", dest="spinner")
    p.add_argument("--raw-list", action="store_true")
    p.add_argument("--disk", "-d", action="store_const", dest="format", const="disk")
    p.add_argument("--network", "-n", action="store_const", dest="format", const="network")
    p.add_argument("--kernel", "-k", action="store_const", dest="format", const="kernel")
    return p


def ls_cell(store, name, col):
    q = store.qube(name)
    col = col.upper()
    if col == "NAME":
        return name
    if col == "STATE":
        return q["state"]
    if col == "CLASS":
        return q["klass"]
    try:
        value, _d = prop_value(store, name, col.lower().replace("-", "_"))
    except KeyError:
        return "-"
    value = prop_str(value)
    return value or "-"


def cmd_ls(argv, store):
    p = ls_parser()
    args = p.parse_args(argv)
    domains = resolve_domains(p, args, store, "*")
    if args.help_columns or args.help_formats:
        raise QubesError("--help-columns/--help-formats are not simulated")
    if args.raw_list:
        args.raw_data = True
        args.fields = "name"
    cols = [c.strip() for c in args.fields.split(",")] if args.fields else LS_FORMATS[args.format]
    if not domains or args.all_domains:
        domains = sorted(store.qubes)
    if args.tags:
        domains = [d for d in domains if set(store.qube(d)["tags"]) & set(args.tags)]
    states = [s for s in ("running", "paused", "halted") if getattr(args, s)]
    if states:
        domains = [d for d in domains if store.qube(d)["state"].lower() in states]
    rows = [[ls_cell(store, d, c) for c in cols] for d in sorted(domains)]
    if args.raw_data:
        for r in rows:
            sys.stdout.write("|".join(r) + "\n")
    else:
        print_table([[c.upper() for c in cols]] + rows)
    return 0


# ------------------------------------------------------------------------------------------------
# qvm-prefs (qvm_prefs.py)
# ------------------------------------------------------------------------------------------------

def cmd_prefs(argv, store):
    p = Parser(vmname_nargs=1, prog="qvm-prefs")
    p.add_argument("--help-properties", action="store_true")
    p.add_argument("--hide-default", action="store_true")
    p.add_argument("--get", "-g", action="store_true")
    p.add_argument("--set", "-s", action="store_true")
    p.add_argument("property", metavar="PROPERTY", nargs="?")
    grp = p.add_mutually_exclusive_group()
    grp.add_argument("value", metavar="VALUE", nargs="?")
    p.add_argument("--default", "-D", dest="delete", action="store_true")
    args = p.parse_args(argv)
    name = resolve_domains(p, args, store, 1)[0]
    q = store.qube(name)
    if args.help_properties:
        raise QubesError("--help-properties is not simulated")
    if args.property is None:
        props = sorted(set(q["prefs"]) | set(q.get("defaults", {})) | {"name", "klass"})
        width = max(len(x) for x in props)
        for prop in props:
            value, default = prop_value(store, name, prop)
            if not default:
                print(f"{prop:{width}s}  -  {prop_str(value) or ''}")
            elif not args.hide_default:
                print(f"{prop:{width}s}  D  {prop_str(value) or ''}")
        return 0
    prop = args.property.replace("-", "_")
    if args.value is not None:
        if prop not in q["prefs"] and prop not in q.get("defaults", {}):
            p.error(f"no such property: {prop!r}")
        value = args.value
        if value.lower() == "none" and prop in ("default_dispvm", "netvm", "template",
                                                "guivm", "audiovm"):
            value = ""
        if prop in ("name", "klass", "qid", "uuid"):
            p.error_runtime(f"Property {prop!r} is read-only")
        try:
            q["prefs"][prop] = parse_prop(store, prop, value)
        except QubesError as err:
            p.error_runtime(err)
        store.save()
        return 0
    if args.delete:
        if prop not in q["prefs"] and prop not in q.get("defaults", {}):
            p.error(f"no such property: {prop!r}")
        q["prefs"].pop(prop, None)
        store.save()
        return 0
    try:
        value, default = prop_value(store, name, prop)
    except KeyError:
        p.error(f"no such property: {prop!r}")
    if args.hide_default and default:
        return 0
    if value is not None:
        print(prop_str(value))
    return 0


# ------------------------------------------------------------------------------------------------
# qvm-features, qvm-tags (qvm_features.py, qvm_tags.py)
# ------------------------------------------------------------------------------------------------

def cmd_features(argv, store):
    p = Parser(vmname_nargs=1, prog="qvm-features")
    p.add_argument("feature", metavar="FEATURE", nargs="?")
    p.add_argument("value", metavar="VALUE", nargs="?")
    p.add_argument("--unset", "--default", "--delete", "-D", dest="delete", action="store_true")
    args = p.parse_args(argv)
    q = store.qube(resolve_domains(p, args, store, 1)[0])
    feats = q["features"]
    if args.feature is None:
        if args.delete:
            p.error("--unset requires a feature")
        print_table([(k, v) for k, v in feats.items()])
    elif args.delete:
        if args.value is not None:
            p.error("cannot both set and unset a value")
        feats.pop(args.feature, None)
        store.save()
    elif args.value is None:
        if args.feature not in feats:
            return 1
        print(feats[args.feature])
    else:
        feats[args.feature] = args.value
        store.save()
    return 0


def add_subparsers(p, title):
    return p.add_subparsers(title=title, dest="command", parser_class=Parser)


def add_aliased(sub, name, aliases):
    return sub.add_parser(name, aliases=aliases)


def cmd_tags(argv, store):
    p = Parser(vmname_nargs=1, prog="qvm-tags")
    sub = add_subparsers(p, "commands")
    lp = add_aliased(sub, "list", ["ls", "l"])
    lp.add_argument("tag", nargs="?", default=None)
    ap = add_aliased(sub, "add", ["a", "set"])
    ap.add_argument("tag", nargs="+")
    dp = add_aliased(sub, "del", ["d", "unset", "u"])
    dp.add_argument("tag", nargs=1)
    args = p.parse_args(argv)
    q = store.qube(resolve_domains(p, args, store, 1)[0])
    cmd = args.command or "list"
    if cmd in ("list", "ls", "l"):
        tag = getattr(args, "tag", None)
        if tag is None:
            if q["tags"]:
                print("\n".join(sorted(q["tags"])))
            return 0
        if tag not in q["tags"]:
            return 1
        print(tag)
        return 0
    if cmd in ("add", "a", "set"):
        q["tags"] = sorted(set(q["tags"]) | set(args.tag))
    else:
        q["tags"] = sorted(set(q["tags"]) - set(args.tag))
    store.save()
    return 0


# ------------------------------------------------------------------------------------------------
# Volumes: file-reflink pool (qubes/storage/reflink.py), qvm-volume, qvm-pool
# ------------------------------------------------------------------------------------------------

def vol_paths(vol):
    base = os.path.join(POOL["dir_path"], vol["vid"])
    return base + ".img", base + "-dirty.img"


def vol_usage(vol):
    clean, dirty = vol_paths(vol)
    for path in (dirty, clean):
        with contextlib.suppress(OSError):
            return os.stat(path).st_blocks * 512
    return 0


def cmd_volume(argv, store):
    p = Parser(prog="qvm-volume")
    sub = add_subparsers(p, "commands")
    ip = add_aliased(sub, "info", ["i"])
    ip.add_argument(metavar="VM:VOLUME", dest="volume")
    ip.add_argument(dest="property", nargs="?")
    cp = add_aliased(sub, "config", ["c", "set", "s"])
    cp.add_argument(metavar="VM:VOLUME", dest="volume")
    cp.add_argument(dest="property")
    cp.add_argument(dest="value")
    # qvm_volume.py init_extend_parser: "resize", alias "extend" (v4.2.18, v4.3.34)
    xp = add_aliased(sub, "resize", ["extend"])
    xp.add_argument(metavar="VM:VOLUME", dest="volume")
    xp.add_argument("size")
    xp.add_argument("--force", "-f", action="store_true")
    lsp = add_aliased(sub, "list", ["ls", "l"])
    lsp.add_argument("-p", "--pool", dest="pools", action="append")
    lsp.add_argument("--full", action="store_true")
    lsp.add_argument("VMNAME", nargs="*")
    rp = add_aliased(sub, "revert", ["r"])
    rp.add_argument(metavar="VM:VOLUME", dest="volume")
    rp.add_argument(dest="revision", nargs="?")
    mp = add_aliased(sub, "import", [])
    mp.add_argument(metavar="VM:VOLUME", dest="volume")
    mp.add_argument("input_path", metavar="PATH")
    mp.add_argument("--size", type=int)
    mp.add_argument("--no-resize", action="store_true")
    args = p.parse_args(argv)
    cmd = args.command
    if cmd not in ("info", "i", "resize", "extend"):
        raise QubesError(f"qvm-volume {cmd or 'list'} is not simulated")
    # VMVolumeAction.parse_qubes_app
    if ":" not in args.volume:
        p.error("expected a vm & volume combination like foo:bar")
    vm, volname = args.volume.split(":", 1)
    if vm not in store.qubes:
        p.error_runtime(f"no vm {vm!r}")
    vol = store.qube(vm)["volumes"].get(volname)
    if vol is None:
        p.error_runtime(f"vm {vm!r} has no volume {volname!r}")
    if cmd in ("resize", "extend"):
        return volume_resize(store, vol, args.size, args.force)
    info = {"pool": vol["pool"], "vid": vol["vid"], "rw": str(vol["rw"]), "source": "",
            "save_on_stop": str(vol["save_on_stop"]), "snap_on_start": str(vol["snap_on_start"]),
            "size": str(vol["size"]), "usage": str(vol_usage(vol)),
            "revisions_to_keep": str(vol["revisions_to_keep"]),
            "ephemeral": str(vol["ephemeral"])}
    if args.property:
        if args.property == "revisions":
            return 0
        if args.property == "is_outdated":
            print("False")
            return 0
        if args.property not in info:
            raise QubesError(f"No such property: {args.property}")
        print(info[args.property])
        return 0
    info["is_outdated"] = "False"
    print_table(list(info.items()))
    print("List of available revisions (for revert): none")
    return 0


def volume_resize(store, vol, size_arg, force):
    """qvm_volume.py extend_volumes (no shrinking without --force) and core-admin
    qubes/storage/reflink.py ReflinkVolume.resize (v4.2.39, v4.3.50): the running copy
    (-dirty.img) is resized if it exists, else the committed image."""
    if not size_arg.isdigit():
        raise QubesError(f"size {size_arg!r} with a unit suffix is not simulated")
    size = int(size_arg)
    if not force and size < vol["size"]:
        raise QubesError(
            f"For your own safety, shrinking of {vol['vid']} is disabled ({size} < {vol['size']}). "
            "If you really know what you are doing, resize filesystem manually first, then use "
            "`-f` option.")
    if not vol["rw"]:
        raise QubesError(f"Cannot resize: {vol['vid']} is read-only")
    clean, dirty = vol_paths(vol)
    path = dirty if os.path.exists(dirty) else clean
    with open(path, "r+b") as f:
        f.truncate(size)
    vol["size"] = size
    store.save()
    return 0


# ------------------------------------------------------------------------------------------------
# qvm-create (qvm_create.py; core-admin qubes/storage/reflink.py ReflinkVolume.create)
# ------------------------------------------------------------------------------------------------

# core-admin qubes/config.py defaults['private_img_size'] (v4.2.39, v4.3.50)
PRIVATE_IMG_SIZE = 2 * 1024 * 1024 * 1024


def cmd_create(argv, store):
    p = Parser(prog="qvm-create")
    p.add_argument("--class", "-C", dest="cls", default="AppVM")
    p.add_argument("--standalone", action="store_true")
    p.add_argument("--disp", action="store_true")
    p.add_argument("--property", "--prop", action="append", default=[])
    p.add_argument("--pool", "-p", action="append")
    p.add_argument("-P", dest="one_pool", default="")
    p.add_argument("--template", "-t")
    p.add_argument("--label", "-l")
    p.add_argument("--help-classes", action="store_true")
    root = p.add_mutually_exclusive_group()
    root.add_argument("--root-copy-from", "-r", metavar="FILENAME")
    root.add_argument("--root-move-from", "-R", metavar="FILENAME")
    root.add_argument("--no-root", action="store_true", default=False)
    p.add_argument("name", metavar="VMNAME", nargs="?")
    args = p.parse_args(argv)
    if args.property or args.pool or args.one_pool or args.root_copy_from or args.root_move_from:
        raise QubesError("qvm-create --property/--pool/-P/--root-* are not simulated")
    if args.help_classes:
        raise QubesError("--help-classes is not simulated")
    cls = "StandaloneVM" if args.standalone else "DispVM" if args.disp else args.cls
    label = args.label or ("red" if args.disp else None)
    if not args.name:
        p.error("VMNAME is mandatory")
    if label is None:
        p.error("--label option is mandatory")
    if label not in LABELS:
        p.error(f"no such label: {label!r}; available: {', '.join(LABELS)}")
    if cls not in ("AppVM", "StandaloneVM", "TemplateVM"):
        raise QubesError(f"qvm-create --class {cls} is not simulated")
    if args.name in store.qubes:
        raise QubesError(f"VM {args.name} already exists")
    prefs = {"label": label}
    if args.template:
        # api/admin.py _vm_create: a template only for classes that have one
        if cls == "TemplateVM":
            raise QubesError(f"{cls} cannot be based on template")
        t = store.qubes.get(args.template)
        if t is None or t["klass"] != "TemplateVM":
            raise QubesError(f"No such template: {args.template!r}")
        if cls == "AppVM":
            prefs["template"] = args.template
        # StandaloneVM: qvm_create.py clone_vm()s the template (root volumes: not simulated)
    # qubes/config.py: file pools keep templates under vm-templates/, other qubes under appvms/
    top = "vm-templates" if cls == "TemplateVM" else "appvms"
    vid = f"{top}/{args.name}/private"
    vol = {"pool": POOL["name"], "vid": vid, "size": PRIVATE_IMG_SIZE, "rw": True,
           "save_on_stop": True, "snap_on_start": False, "revisions_to_keep": 0,
           "ephemeral": False}
    clean, _ = vol_paths(vol)
    os.makedirs(os.path.dirname(clean), exist_ok=True)
    with open(clean, "wb") as f:  # _create_sparse_file
        f.truncate(PRIVATE_IMG_SIZE)
    # a TemplateVM never runs in the sim (no root volumes): created, restored, not started
    q = new_qube(cls, None if cls == "TemplateVM" else "app", volumes={"private": vol},
                 prefs=prefs)
    if cls == "AppVM" and "template" not in prefs:
        q["defaults"]["template"] = "debian-12"  # the sim's default_template
    q["defaults"].update({"netvm": None, "kernel": ""})
    store.qubes[args.name] = q
    store.save()
    return 0


def cmd_pool(argv, store):
    # qvm_pool.py uses_legacy_options(): -a/-i/-l/-r/-s/--help-drivers go to the legacy tool
    legacy = {"-a", "--add", "-i", "--info", "-l", "--list", "-r", "--remove", "-s", "--set",
              "--help-drivers"}
    if legacy & set(argv):
        raise QubesError("the legacy qvm-pool options are not simulated")
    p = Parser(prog="qvm-pool")
    sub = add_subparsers(p, "commands")
    add_aliased(sub, "drivers", ["d"])
    add_aliased(sub, "list", ["l", "ls"])
    ip = add_aliased(sub, "info", ["i"])
    ip.add_argument(metavar="POOL_NAME", dest="pools", action="append")
    ap = add_aliased(sub, "add", ["a"])
    ap.add_argument(metavar="POOL_NAME", dest="pool_name")
    ap.add_argument(metavar="DRIVER", dest="driver")
    ap.add_argument("--option", "-o", action="append")
    rp = add_aliased(sub, "remove", ["r", "rm"])
    rp.add_argument(metavar="POOL_NAME", dest="pool_names", nargs="+")
    sp = add_aliased(sub, "set", ["s"])
    sp.add_argument(metavar="POOL_NAME", dest="pool_name")
    sp.add_argument("--option", "-o", action="append")
    args = p.parse_args(argv)
    if args.command not in ("info", "i"):
        raise QubesError(f"qvm-pool {args.command or 'list'} is not simulated")
    if args.pools != [POOL["name"]]:
        p.error(f"No such pools: {args.pools}")
    rows = [("name", POOL["name"])] + sorted((k, v) for k, v in POOL.items() if k != "name")
    print_table(rows)
    return 0


# ------------------------------------------------------------------------------------------------
# Qube runtime: keepers (tests/sim/qube-init), reflink start/stop, disposable reset
# ------------------------------------------------------------------------------------------------

def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          **kw).stdout.decode().strip()


def keeper_pid(state, name):
    with open(os.path.join(state, "qubes", name, "pid"), encoding="utf-8") as f:
        return int(f.read().strip())


def in_qube(state, name, *argv):
    return run(["nsenter", f"--target={keeper_pid(state, name)}", "--mount", "--net", "--uts",
                "--", *argv])


def qube_mnt_ns(state, name):
    """The keeper's mount namespace, if the keeper is still the process its pid file names."""
    try:
        pid = keeper_pid(state, name)
        # (a dead keeper's pid may have been reused: its mounts must name this qube's dirs)
        with open(f"/proc/{pid}/mountinfo", "rb") as f:
            if os.path.join(state, "qubes", name, "").encode() not in f.read():
                return None
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (OSError, ValueError):
        return None


def kill_qube(state, name):
    """Every process in the qube's mount namespace: SIGTERM, then SIGKILL after a grace time."""
    ns = qube_mnt_ns(state, name)
    if ns is None:
        return
    deadline = time.monotonic() + 1.0
    sig = signal.SIGTERM
    for _ in range(100):
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                    os.kill(int(pid), sig)
                    found = True
            except OSError:
                pass
        if not found:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.05)
    raise QubesError(f"processes of {name} do not die")


def start_keeper(state, name, sim_dir):
    root = os.path.join(state, "roots", name)
    qdir = os.path.join(state, "qubes", name)
    ready = os.path.join(qdir, "pid.ready")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ready)
    log = open(os.path.join(state, "keepers.log"), "ab")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--net", "--uts", "--propagation", "private", "--",
         os.path.join(sim_dir, "qube-init"), name, root, os.path.join(qdir, "sim"),
         os.path.join(qdir, "upper"), ready],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        start_new_session=True)
    with open(os.path.join(qdir, "pid"), "w", encoding="utf-8") as f:
        f.write(f"{proc.pid}\n")
    for _ in range(200):
        if os.path.exists(ready) and os.path.getsize(ready):
            return
        if proc.poll() is not None:
            raise QubesError(f"qube {name} did not start (see {state}/keepers.log)")
        time.sleep(0.05)
    raise QubesError(f"qube {name} did not become ready")


def reset_from(src, dst):
    run(["rm", "-rf", "--one-file-system", dst])
    run(["cp", "-a", src, dst])


def losetup(*args):
    # --find can lose a race with another losetup (another simulation on the same kernel)
    for attempt in range(5):
        try:
            return run(["losetup", *args])
        except subprocess.CalledProcessError as err:
            if b"busy" not in (err.stderr or b"") or attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def wait_loop_gone(dev, timeout=10.0):
    """losetup -d on a busy device only sets autoclear: wait until the kernel let it go."""
    name = os.path.basename(dev)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/sys/block/{name}/loop"):
        if time.monotonic() > deadline:
            raise QubesError(f"{dev} is still in use")
        time.sleep(0.05)


def start_qube(store, name):
    q = store.qube(name)
    state = store.state
    sim_dir = store.data["sim_dir"]
    if q.get("runtime") not in ("app", "service", "disposable"):
        raise QubesError(f"starting a {q['klass']} is not simulated")
    if q["runtime"] == "disposable":
        # a named disposable: its state is that of the dvm template, reset on every start
        tpl = os.path.join(state, "qubes", q["prefs"]["template"])
        qdir = os.path.join(state, "qubes", name)
        reset_from(os.path.join(tpl, "upper"), os.path.join(qdir, "upper"))
        for d in ("root", "home", "tmp", "var/tmp"):
            reset_from(os.path.join(tpl, "private", d), os.path.join(state, "roots", name, d))
    start_keeper(state, name, sim_dir)
    try:
        uid = in_qube(state, name, "id", "-u", "user")
    except subprocess.CalledProcessError:
        # first start of an app qube: its user (the root overlay's upper dir keeps it), uid 1000
        # as in a Qubes template (its private volume's home/user is 1000's); the host may have
        # a uid 1000 of its own, which the qube's /etc/passwd inherits: shared then
        in_qube(state, name, "useradd", "--create-home", "--user-group", "--non-unique",
                "--uid", "1000", "--shell", "/bin/bash", "user")
        uid = in_qube(state, name, "id", "-u", "user")
    in_qube(state, name, "install", "-d", "-m", "0700", "-o", "user", "-g", "user",
            f"/run/user/{uid}")
    vol = q["volumes"].get("private")
    if q["runtime"] == "app" and vol:
        # reflink.py start() of a save_on_stop volume: copy of the committed image
        clean, dirty = vol_paths(vol)
        if not os.path.exists(dirty):
            run(["cp", "--reflink=auto", "--sparse=always", "--", clean, dirty + "~"])
            os.replace(dirty + "~", dirty)
        loop = losetup("--find", "--show", dirty)
        q["disk_loops"] = [loop]
        st = os.stat(loop)
        in_qube(state, name, "mknod", "-m", "0660", "/dev/xvdb", "b",
                str(os.major(st.st_rdev)), str(os.minor(st.st_rdev)))
        in_qube(state, name, "mkdir", "-p", "/rw")
        in_qube(state, name, "mount", "/dev/xvdb", "/rw")
        in_qube(state, name, "mount", "--bind", "/rw/home", "/home")
    q["state"] = "Running"


def stop_qube(store, name):
    q = store.qube(name)
    state = store.state
    kill_qube(state, name)
    # no pid file for a halted qube (its pid may be reused by anything)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state, "qubes", name, "pid"))
    # domain-shutdown: its devices are detached once the domain is gone (and has let go of them)
    for att in [a for a in store.data["attachments"] if a["frontend"] == name]:
        detach(store, att, timeout=10.0)
    for loop in q.pop("disk_loops", []):
        with contextlib.suppress(subprocess.CalledProcessError):
            losetup("-d", loop)
        wait_loop_gone(loop)
    vol = q["volumes"].get("private")
    if q.get("runtime") == "app" and vol:
        clean, dirty = vol_paths(vol)
        if os.path.exists(dirty):           # reflink.py stop(): commit the running copy
            os.replace(dirty, clean)
    q["state"] = "Halted"


def cmd_start(argv, store):
    p = Parser(vmname_nargs="+", prog="qvm-start")
    p.add_argument("--skip-if-running", action="store_true", default=False)
    drive = p.add_mutually_exclusive_group()
    drive.add_argument("--drive", metavar="DRIVE")
    drive.add_argument("--hddisk", dest="drive")
    drive.add_argument("--cdrom", metavar="IMAGE", dest="drive")
    drive.add_argument("--install-windows-tools", action="store_const", dest="drive",
                       default=False, const="cdrom:dom0:/usr/lib/qubes/qubes-windows-tools.iso")
    args = p.parse_args(argv)
    for name in resolve_domains(p, args, store, "+"):
        if store.is_running(name):
            if args.skip_if_running:
                continue
            print(f"Error: domain {name} is already running", file=sys.stderr)
            return 1
        if args.drive:
            raise QubesError("--drive is not simulated")
        try:
            start_qube(store, name)
        except (QubesError, subprocess.CalledProcessError, OSError) as err:
            store.save()
            print(f"Error: {name}: Start failed: {err}", file=sys.stderr)
            return 1
        store.save()
    return 0


def cmd_shutdown(argv, store):
    p = Parser(vmname_nargs="+", prog="qvm-shutdown")
    p.add_argument("--wait", action="store_true", default=False)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--force", action="store_true", default=False)
    p.add_argument("--dry-run", action="store_true", dest="dry_run", default=False)
    args = p.parse_args(argv)
    names = resolve_domains(p, args, store, "+")
    if args.dry_run:
        return 0
    failed = []
    for name in names:
        q = store.qube(name)
        if q["klass"] == "AdminVM":
            failed.append(name)
            continue
        if q["state"] != "Running":
            continue                                # QubesVMNotStartedError is ignored
        try:
            stop_qube(store, name)
        except (QubesError, subprocess.CalledProcessError, OSError) as err:
            print(f"{name}: Shutdown error: {err}", file=sys.stderr)
            failed.append(name)
        store.save()
    if failed:
        p.error_runtime("Failed to shut down: " + ", ".join(failed), len(failed))
    return 0


# ------------------------------------------------------------------------------------------------
# qvm-block (qvm_device.py for class "block"; validation of qubes/ext/block.py)
# ------------------------------------------------------------------------------------------------

def dom0_block_devices(store):
    """What qubes-linux-utils udev/udev-block-add-change exports of dom0's loop devices:
    bound loops not backed by a file under a directory holding .qubes-exclude-block-devices;
    mode r when the device is read-only. Loops the sim uses as qubes' own disks are not listed."""
    used = {os.path.basename(d) for q in store.qubes.values() for d in q.get("disk_loops", [])}
    used |= {os.path.basename(a["extra_loop"]) for a in store.data["attachments"]
             if a.get("extra_loop")}
    devs = {}
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith("loop") or name in used:
            continue
        sysd = f"/sys/block/{name}"
        if not os.path.isdir(f"{sysd}/loop"):
            continue
        try:
            with open(f"{sysd}/loop/backing_file", encoding="utf-8") as f:
                backing = f.read().strip()
            with open(f"{sysd}/ro", encoding="utf-8") as f:
                mode = "r" if f.read().strip() == "1" else "w"
        except OSError:
            continue
        d = os.path.dirname(backing)
        excluded = False
        while d not in ("/", ".", ""):
            if os.path.exists(os.path.join(d, ".qubes-exclude-block-devices")):
                excluded = True
                break
            d = os.path.dirname(d)
        if not excluded:
            devs[name] = {"desc": backing, "mode": mode}
    return devs


def attach(store, vm, backend, port, options):
    """qubes/ext/block.py on_device_pre_attached_block (v4.2.39 and v4.3.50)."""
    for opt, value in list(options.items()):
        if opt == "frontend-dev":
            if not value.startswith("xvd") and not value.startswith("sd"):
                raise QubesError("Invalid frontend-dev option value: " + value)
        elif opt == "read-only":
            low = value.lower()
            if low not in BOOL_TRUE + BOOL_FALSE:
                raise QubesError(f"Invalid value for read-only: {value!r}")
            options[opt] = "yes" if low in BOOL_TRUE else "no"
        elif opt == "devtype":
            if value not in ("disk", "cdrom"):
                raise QubesError("devtype option can only have 'disk' or 'cdrom' value")
        else:
            raise QubesError(f"Unsupported option {opt}")
    dev = dom0_block_devices(store)[port]
    if "read-only" not in options:
        options["read-only"] = "yes" if dev["mode"] == "r" else "no"
    if options["read-only"] == "no" and dev["mode"] == "r":
        raise QubesError("This device can be attached only read-only")
    if not store.is_running(vm):
        # v4.3.50 says so on stderr and attaches nothing (v4.2.39: silently nothing)
        print(f"Can not attach device, qube {vm} is not running.", file=sys.stderr)
        return
    for a in store.data["attachments"]:
        if a["backend"] == backend and a["port"] == port:
            raise QubesError(f"Device {backend}:{port} already attached to {a['frontend']}")
    used = {a["dev"] for a in store.data["attachments"] if a["frontend"] == vm}
    used |= {"xvda", "xvdb", "xvdc", "xvdd"}
    fdev = options.get("frontend-dev") or next(f for f in FRONTENDS if f not in used)
    if fdev in used or not re.fullmatch(r"[a-z]{1,8}[0-9]{0,3}", fdev):
        # libvirt refuses a target dev already in use (or not a disk name)
        raise QubesError(f"libvirt: target {fdev} cannot be used in {vm}")
    src = f"/dev/{port}"
    extra = None
    if options["read-only"] == "yes" and dev["mode"] == "w":
        # Xen blkback opens the backend read-only: the sim puts a read-only loop over it
        extra = losetup("--read-only", "--find", "--show", src)
        src = extra
    st = os.stat(src)
    att = {"backend": backend, "port": port, "frontend": vm, "dev": fdev,
           "ro": options["read-only"] == "yes", "extra_loop": extra}
    store.data["attachments"].append(att)
    store.save()
    mode = "0440" if att["ro"] else "0660"
    in_qube(store.state, vm, "mknod", "-m", mode, f"/dev/{fdev}", "b",
            str(os.major(st.st_rdev)), str(os.minor(st.st_rdev)))


def wait_released(dev, timeout):
    """Until nothing holds DEV open exclusively (a mount in the qube does): Xen's blkback lets
    go of a backend device only when the frontend has, or the domain is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def detach(store, att, timeout=2.0):
    with contextlib.suppress(subprocess.CalledProcessError, OSError, ValueError):
        in_qube(store.state, att["frontend"], "rm", "-f", f"/dev/{att['dev']}")
    if not wait_released(att.get("extra_loop") or f"/dev/{att['port']}", timeout):
        raise QubesError(f"Device {att['backend']}:{att['port']} is still in use by "
                         f"{att['frontend']} (mounted?)")
    if att.get("extra_loop"):
        with contextlib.suppress(subprocess.CalledProcessError):
            losetup("-d", att["extra_loop"])
    store.data["attachments"].remove(att)
    store.save()


def cmd_block(argv, store):
    p = Parser(prog="qvm-block")
    p.allow_abbrev = False
    p.add_argument("devclass", const="block", action="store_const")
    p.add_argument("--list-device-classes", action="store_true", default=False)
    sub = add_subparsers(p, "commands")
    lp = add_aliased(sub, "list", ["ls", "l"])
    lp.add_argument("--all", action="store_true", dest="all_domains")
    lp.add_argument("--exclude", action="append", default=[])
    lp.add_argument("VMNAME", nargs="*", default=[])
    ap = add_aliased(sub, "attach", ["at", "a"])
    dp = add_aliased(sub, "detach", ["d", "dt"])
    ap.add_argument("VMNAME", nargs=1)
    dp.add_argument("VMNAME", nargs=1)
    ap.add_argument(metavar="BACKEND:DEVICE_ID", dest="device")
    dp.add_argument(metavar="BACKEND:DEVICE_ID", dest="device", nargs="?")
    ap.add_argument("--option", "-o", action="append")
    ap.add_argument("--ro", action="store_true", default=False)
    ap.add_argument("--persistent", "-p", action="store_true", default=False)
    args = p.parse_args(argv)
    if args.list_device_classes:
        print("block")
        return 0
    cmd = args.command or "list"
    if cmd in ("list", "ls", "l"):
        devs = dom0_block_devices(store)
        rows = [("BACKEND:DEVID", "DESCRIPTION", "USED BY")]
        for port, d in devs.items():
            user = [a["frontend"] for a in store.data["attachments"] if a["port"] == port]
            rows.append((f"dom0:{port}", d["desc"], ", ".join(user)))
        print_table(rows)
        return 0
    vm = args.VMNAME[0]
    if vm not in store.qubes:
        p.error(f"no such domain: {vm!r}")
    backend = port = None
    if args.device is not None:
        # DeviceAction.parse_qubes_app
        if ":" not in args.device:
            p.error("expected a backend vm & device id combination like foo:bar got "
                    + args.device)
        backend, port = args.device.split(":", 1)
        if backend not in store.qubes:
            p.error_runtime(f"no backend vm {backend!r}")
        if cmd in ("attach", "at", "a") and (
                backend != "dom0" or port not in dom0_block_devices(store)):
            p.error_runtime(f"backend vm {backend!r} doesn't expose device {port!r}")
    if cmd in ("attach", "at", "a"):
        options = dict(opt.split("=", 1) for opt in args.option or [])
        if args.ro:
            options["read-only"] = "yes"
        if args.persistent:
            raise QubesError("persistent assignments are not simulated")
        attach(store, vm, backend, port, options)
        return 0
    atts = [a for a in store.data["attachments"] if a["frontend"] == vm
            and (port is None or (a["backend"], a["port"]) == (backend, port))]
    if port is not None and not atts:
        raise QubesError(f"Device {backend}:{port} not attached to {vm}")
    for a in atts:
        detach(store, a)
    return 0


# ------------------------------------------------------------------------------------------------
# qvm-run (qvm_run.py): --service SERVICE, or a shell command line (qubes.VMShell), through the
# sim's qrexec, as dom0 (no policy)
# ------------------------------------------------------------------------------------------------

def run_parser():
    p = Parser(prog="qvm-run")
    p.add_argument("--user", "-u", metavar="USER")
    p.add_argument("--autostart", "--auto", "-a", action="store_true", default=True)
    p.add_argument("--no-autostart", "--no-auto", "-n", action="store_false", dest="autostart")
    p.add_argument("--pass-io", "-p", action="store_true", dest="passio", default=False)
    p.add_argument("--localcmd", metavar="COMMAND")
    p.add_argument("--gui", action="store_true", default=None)
    p.add_argument("--no-gui", "--nogui", action="store_false", dest="gui")
    p.add_argument("--colour-output", "--color-output", metavar="COLOUR", dest="color_output",
                   default=None)
    p.add_argument("--colour-stderr", "--color-stderr", metavar="COLOUR", dest="color_stderr",
                   default=None)
    p.add_argument("--no-colour-output", "--no-color-output", action="store_false",
                   dest="color_output")
    p.add_argument("--no-colour-stderr", "--no-color-stderr", action="store_false",
                   dest="color_stderr")
    p.add_argument("--filter-escape-chars", action="store_true", dest="filter_esc",
                   default=os.isatty(sys.stdout.fileno()))
    p.add_argument("--no-filter-escape-chars", action="store_false", dest="filter_esc")
    p.add_argument("--service", action="store_true", dest="service")
    p.add_argument("--no-shell", action="store_true")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--dispvm", nargs="?", const=True, metavar="BASE_APPVM")
    p.add_argument("VMNAME", nargs="?")
    target.add_argument("--all", action="store_true", dest="all_domains")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("cmd", metavar="COMMAND")
    p.add_argument("cmd_args", nargs=argparse.REMAINDER, metavar="ARG")
    return p


def cmd_run(argv, store):
    p = run_parser()
    args = p.parse_args(argv)
    domains = resolve_domains(p, args, store, "?")
    if args.localcmd and not args.passio:
        p.error("--localcmd have no effect without --pass-io")
    if args.color_output and not args.filter_esc:
        p.error("--color-output must be used with --filter-escape-chars")
    if args.service and args.no_shell:
        p.error("--no-shell does not apply to --service")
    if args.dispvm or args.all_domains or len(domains) != 1 or args.localcmd:
        raise QubesError("only 'qvm-run [--user U] --pass-io [--service] VM COMMAND [ARG...]' is simulated")
    if not args.passio:
        raise QubesError("only --pass-io calls are simulated")
    exec_form = not args.service and bool(args.cmd_args or args.no_shell)
    prefix = b""
    service = args.cmd
    if not args.service and not exec_form:
        # run_command_single(): without --no-shell/ARGs COMMAND is a shell command line for
        # qubes.VMShell, sent ahead of stdin as COMMAND + "; exit\n" (prepare_input_for_vmshell;
        # "& exit" only for Windows qubes); --user root would pick qubes.VMRootShell
        if args.user == "root":
            raise QubesError("--user root without --service (qubes.VMRootShell) is not simulated")
        service = "qubes.VMShell"
        prefix = args.cmd.rstrip("\n").encode() + b"; exit\n"
    name = domains[0]
    if not store.is_running(name):
        if not args.autostart:
            # "Qube 'X' not started" only when verbose > 0; --pass-io lowers verbosity to 0
            return 1
        start_qube(store, name)
        store.save()
    state = store.state
    user = args.user or store.qube(name)["prefs"].get("default_user", "user")
    sim_dir = store.data["sim_dir"]
    store.close()                 # the service may run long: release qubesd's lock
    if exec_form:
        # qvm_run.py (v4.3.34, v4.2.18) run_command_single: COMMAND ARG... goes to the qube as
        # qubes.VMExec+<encoded argv> (or qubes.VMShell with the words shell-quoted), which
        # executes that argv as USER; with --pass-io the exit status is the command's. Here:
        # the argv runs in the qube's namespaces as USER (tests/sim/qube-exec), stdio passed.
        return subprocess.call([os.path.join(sim_dir, "qube-exec"), "-s", state, "-u", user,
                                name, args.cmd] + list(args.cmd_args))
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    import qrexec_sim             # pylint: disable=import-outside-toplevel
    return qrexec_sim.dom0_call(state, name, service, user, prefix)


# ------------------------------------------------------------------------------------------------

TOOLS = {"qvm-ls": cmd_ls, "qvm-prefs": cmd_prefs, "qvm-volume": cmd_volume,
         "qvm-pool": cmd_pool, "qvm-block": cmd_block, "qvm-start": cmd_start,
         "qvm-shutdown": cmd_shutdown, "qvm-run": cmd_run, "qvm-features": cmd_features,
         "qvm-tags": cmd_tags, "qvm-create": cmd_create}


def log_call(state, argv):
    path = os.environ.get("QUBES_SIM_DOM0_CALLS") or os.path.join(state, "dom0-calls.jsonl")
    line = json.dumps(argv) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Set-up of the store and the volumes (tests/sim/up), not a Qubes tool; not logged
# ------------------------------------------------------------------------------------------------

def new_qube(klass, runtime, state="Halted", prefs=None, defaults=None, volumes=None):
    d = {"include_in_backups": klass not in ("DispVM",), "backup_timestamp": None,
         "default_user": "user", "memory": 400, "maxmem": 4000, "vcpus": 2,
         "virt_mode": "pvh", "autostart": False, "provides_network": False}
    d.update(defaults or {})
    return {"klass": klass, "runtime": runtime, "state": state, "prefs": prefs or {},
            "defaults": d, "tags": [], "features": {}, "volumes": volumes or {}}


def make_private_image(state, sim_dir, name, data_mib, size_mib, seed):
    """An ext4 private volume with the layout of a Qubes private volume (mounted at /rw in the
    qube: home/user, config, bind-dirs, usrlocal); the tree is kept in STATE/dom0sim/expected
    for comparisons."""
    top = os.path.join(state, "dom0sim", "expected", name)
    for d in ("home/user", "config", "bind-dirs", "usrlocal/bin"):
        os.makedirs(os.path.join(top, d), exist_ok=True)
    with open(os.path.join(top, "config", "rc.local"), "w", encoding="utf-8") as f:
        f.write("#!/bin/sh\n# qube-specific start-up commands (sim)\n")
    os.chmod(os.path.join(top, "config", "rc.local"), 0o755)
    run([sys.executable, "-I", os.path.join(sim_dir, "treedata.py"), "make",
         os.path.join(top, "home", "user", "data"), str(data_mib), str(seed)])
    run(["chown", "-R", "1000:1000", os.path.join(top, "home", "user")])
    # mke2fs -d (e2fsprogs 1.47) stores whole seconds: make the kept tree say the same
    for d, dirs, files in os.walk(top, topdown=False):
        for n in files + dirs:
            st = os.lstat(os.path.join(d, n))
            whole = (st.st_atime_ns // 10**9 * 10**9, st.st_mtime_ns // 10**9 * 10**9)
            os.utime(os.path.join(d, n), ns=whole, follow_symlinks=False)
    vid = f"appvms/{name}/private"
    img = os.path.join(state, "dom0sim", "var-lib-qubes", vid + ".img")
    os.makedirs(os.path.dirname(img), exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(size_mib << 20)
    # 256-byte inodes: nanosecond timestamps (mke2fs picks 128 bytes for a filesystem this small)
    run(["mkfs.ext4", "-q", "-F", "-I", "256", "-E", "root_owner=0:0", "-d", top, img])
    return {"pool": POOL["name"], "vid": vid, "size": size_mib << 20, "rw": True,
            "save_on_stop": True, "snap_on_start": False, "revisions_to_keep": 0,
            "ephemeral": False}


def sim_init(state, sim_dir):
    q = {}
    q["dom0"] = new_qube("AdminVM", None, "Running", prefs={"label": "black"},
                         defaults={"include_in_backups": False})
    q["debian-12"] = new_qube("TemplateVM", None, prefs={"label": "black"},
                              defaults={"include_in_backups": False})
    q["sys-backup-mnt-dvm"] = new_qube(
        "AppVM", None, prefs={"label": "red", "template": "debian-12", "netvm": None,
                              "template_for_dispvms": True, "include_in_backups": False})
    q["sys-backup-mnt"] = new_qube(
        "DispVM", "disposable", "Running",
        prefs={"label": "red", "template": "sys-backup-mnt-dvm", "netvm": None})
    q["sys-backup"] = new_qube("AppVM", "service", "Running",
                               prefs={"label": "orange", "template": "debian-12",
                                      "netvm": "internet", "include_in_backups": False})
    q["ssh-backup"] = new_qube("AppVM", "service", "Running",
                               prefs={"label": "black", "template": "debian-12", "netvm": None,
                                      "include_in_backups": False})
    q["internet"] = new_qube("StandaloneVM", "service", "Running",
                             prefs={"label": "red", "include_in_backups": False,
                                    "provides_network": True})
    apps = (("work", "blue", 6, 1), ("personal", "green", 3, 2), ("vault-data", "black", 3, 3))
    # QUBES_SIM_APP_MIB=N: N MiB of data in each app qube instead (benchmarks)
    big = int(os.environ.get("QUBES_SIM_APP_MIB", "0"))
    for name, label, mib, seed in apps:
        mib = big or mib
        size = max(48, 2 * mib + 16)
        q[name] = new_qube("AppVM", "app", prefs={"label": label, "template": "debian-12",
                                                  "netvm": None},
                           volumes={"private": make_private_image(state, sim_dir, name, mib,
                                                                  size, seed)})
        os.makedirs(os.path.join(state, "qubes", name, "sim"), exist_ok=True)
        os.makedirs(os.path.join(state, "qubes", name, "upper"), exist_ok=True)
    with open(os.path.join(state, "dom0sim", "qubes.json"), "w", encoding="utf-8") as f:
        json.dump({"qubes": q, "attachments": [], "sim_dir": sim_dir}, f, indent=1)


def sim_main(argv):
    """qvm_sim.py sim-init STATE SIM_DIR | sim-start NAME | sim-stop NAME (set-up helpers)."""
    if len(argv) == 4 and argv[1] == "sim-init":
        sim_init(argv[2], argv[3])
        return 0
    if len(argv) == 3 and argv[1] in ("sim-start", "sim-stop"):
        store = Store(sim_state())
        try:
            (start_qube if argv[1] == "sim-start" else stop_qube)(store, argv[2])
            store.save()
        finally:
            store.close()
        return 0
    print("usage: qvm_sim.py sim-init STATE SIM_DIR | sim-start NAME | sim-stop NAME",
          file=sys.stderr)
    return 2


def inject_fault(state):
    """Test hook: STATE/dom0sim/fault holding "N SIGNAL" makes the N-th stand-in call from now
    send SIGNAL (INT, TERM, KILL) to its caller (the dom0 tool) before doing its work, so a test
    can interrupt the tool at every step. Called with the store lock held."""
    path = os.path.join(state, "dom0sim", "fault")
    try:
        with open(path, encoding="utf-8") as f:
            count, sig = f.read().split()
    except (OSError, ValueError):
        return
    if int(count) > 1:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{int(count) - 1} {sig}\n")
        return
    os.unlink(path)
    os.kill(os.getppid(), getattr(signal, "SIG" + sig))


def main(argv):
    tool = os.path.basename(argv[0])
    if tool == "qvm_sim.py":
        return sim_main(argv)
    if tool not in TOOLS:
        print(f"qvm_sim.py: call me as one of {', '.join(sorted(TOOLS))}", file=sys.stderr)
        return 2
    state = sim_state()
    log_call(state, [tool] + argv[1:])
    store = Store(state)
    inject_fault(state)
    try:
        return TOOLS[tool](argv[1:], store)
    except QubesError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv))
