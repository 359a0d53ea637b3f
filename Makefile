# qubes-borg: build, test, install (DESTDIR-aware, as Qubes components do).
CARGO      ?= cargo
DESTDIR    ?=
BINDIR     ?= /usr/bin
LIBEXECDIR ?= /usr/libexec/qubes-borg
UNITDIR    ?= /usr/lib/systemd/system
PRESETDIR  ?= /usr/lib/systemd/system-preset
BINDDIRSDIR ?= /usr/lib/qubes-bind-dirs.d
RELEASE    := target/release
FORMULADIR ?= /srv/formulas/base/qubes-borg-formula
PILLARDIR  ?= /srv/pillar/base/qubes-borg

# Programs installed in the templates of sys-backup-mnt, sys-backup and ssh-backup.
VM_BINS      := qubes-relay qubes-ssh-client
VM_LIBEXEC   := qubes-ssh-service qubes-agent-filter qubes-borg-job
# Programs installed in dom0.
DOM0_BINS    := qvm-backup-borg

.PHONY: all build test lint demo bench mutants mutants-diff mutants-files install-vm install-dom0 clean dist rpm deb

all: build

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings
	tests/lint-shell

# The single entry point for every test.
test: build lint
	$(CARGO) test --release --locked -- --test-threads=1
	tests/e2e/run
	tests/packaging/run

demo:
	tests/sim/demo

# Mutation testing of the security-critical files (docs/TESTING.md; needs cargo-mutants).
# The one list of those files; .cargo/mutants.toml holds the test arguments and exclusions.
MUTANTS_FILES := src/validate.rs src/ssh/argv.rs src/ssh/header.rs src/ssh/status.rs \
	src/ssh/destination.rs src/ssh/command.rs src/host_key.rs src/safe_path.rs \
	src/agent/wire.rs src/agent/filter.rs src/job/spec.rs src/job/progress.rs \
	src/dom0/config.rs src/dom0/metadata.rs src/dom0/archives.rs src/dom0/json.rs \
	src/job/classify.rs src/job/spot.rs src/dom0/cli.rs src/dom0/check_result.rs
MUTANTS_ARGS := $(addprefix --file ,$(MUTANTS_FILES))
# Fails when a mutant is missed (exit 2) or times out (exit 3).
mutants:
	CARGO_PROFILE_DEV_DEBUG=0 nice -n 10 $(CARGO) mutants $(MUTANTS_ARGS)
# Only the mutants in lines changed since MUTANTS_BASE in those files (CI; at most MUTANTS_MAX, 25).
MUTANTS_BASE ?= HEAD~1
mutants-diff:
	tests/mutants-diff $(MUTANTS_BASE) $(MUTANTS_FILES)
# The list itself, for CI (.ci/run) to see whether a commit touched those files.
mutants-files:
	@echo $(MUTANTS_FILES)

bench: build
	tests/bench/run

# install-vm builds first: needs cargo and rustc >= 1.80 (rustup, or Debian 13 / Fedora packages)
# and, at run time in the template, borgbackup, ssh, qrexec (qubes-core-qrexec[-vm]).
install-vm: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR)
	install -m 0755 $(addprefix $(RELEASE)/,$(VM_BINS)) $(DESTDIR)$(BINDIR)/
	install -m 0755 $(addprefix $(RELEASE)/,$(VM_LIBEXEC)) $(DESTDIR)$(LIBEXECDIR)/
	install -d $(DESTDIR)/etc/qubes-rpc
	install -m 0755 qubes-rpc/qubes-borg.Ssh qubes-rpc/qubes-borg.SshAgent qubes-rpc/qubes-borg.BackupJob $(DESTDIR)/etc/qubes-rpc/
	# sys-backup: persistent /etc/qubes-borg for the qubes-borg.Ssh destinations (docs/PROTOCOL.md)
	install -d $(DESTDIR)$(BINDDIRSDIR) $(DESTDIR)/etc/qubes-borg/destinations
	install -m 0644 qubes-bind-dirs/50_qubes-borg.conf $(DESTDIR)$(BINDDIRSDIR)/
	# ssh-backup: backup key tool and its dedicated ssh-agent (docs/SPLIT-SSH.md)
	install -m 0755 scripts/qubes-borg-keygen $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PRESETDIR)
	install -m 0644 systemd/qubes-borg-agent@.service $(DESTDIR)$(UNITDIR)/
	install -m 0644 systemd/75-qubes-borg-agent.preset $(DESTDIR)$(PRESETDIR)/
	# Straight into a system (no DESTDIR): enable the units as the packages' scriptlets do.
	if [ -z "$(DESTDIR)" ]; then systemctl daemon-reload && systemctl preset qubes-borg-agent@.service; fi

install-dom0: build
	# qvm-backup-borg, its configuration (root-only) and its timer (shipped disabled)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR)
	install -m 0755 $(addprefix $(RELEASE)/,$(DOM0_BINS)) $(DESTDIR)$(BINDIR)/
	install -d -m 0700 $(DESTDIR)/etc/qubes-borg
	install -m 0600 conf/backup.conf $(DESTDIR)/etc/qubes-borg/
	install -m 0644 systemd/qvm-backup-borg.service systemd/qvm-backup-borg.timer systemd/qvm-backup-borg-notify.service $(DESTDIR)$(UNITDIR)/
	install -d $(DESTDIR)$(LIBEXECDIR)
	install -m 0755 scripts/qvm-backup-borg-notify $(DESTDIR)$(LIBEXECDIR)/
	install -d $(DESTDIR)/etc/qubes/policy.d
	install -m 0664 policy/*.policy $(DESTDIR)/etc/qubes/policy.d/
	# Salt formula (layout: salt/FORMULA): states, the policy they render, pillar, file_roots
	install -d $(DESTDIR)$(FORMULADIR)/qubes-borg/files $(DESTDIR)$(PILLARDIR) $(DESTDIR)/etc/salt/minion.d
	install -m 0644 salt/qubes-borg/*.sls salt/qubes-borg/*.top salt/qubes-borg/*.jinja $(DESTDIR)$(FORMULADIR)/qubes-borg/
	install -m 0644 policy/70-qubes-borg.policy $(DESTDIR)$(FORMULADIR)/qubes-borg/files/
	install -m 0755 salt/qubes-borg/files/template-packages $(DESTDIR)$(FORMULADIR)/qubes-borg/files/
	install -m 0644 salt/pillar/qubes-borg/init.sls salt/pillar/qubes-borg/init.top $(DESTDIR)$(PILLARDIR)/
	install -m 0644 salt/minion.d/formula-qubes-borg.conf $(DESTDIR)/etc/salt/minion.d/

clean:
	$(CARGO) clean

# Source tarball and RPMs in build/ (rpm/README.md). RPM_PREBUILT=1: package target/release.
dist:
	rpm/make-dist build
rpm: dist $(if $(RPM_PREBUILT),build)
	rpm/build-rpms build
# The VM package as a .deb in build/deb/ (debian/README.md). DEB_PREBUILT=1: package target/release.
deb: dist $(if $(DEB_PREBUILT),build)
	debian/build-deb build
