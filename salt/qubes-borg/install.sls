# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.install
# ==================
# Runs inside the dedicated template (not in dom0), Fedora or Debian: installs or upgrades the
# VM package qubes-borg (its dependencies bring borgbackup, ssh and qrexec) and what a minimal
# template lacks. sys-backup-mnt, sys-backup and ssh-backup get the software from here after
# their next start.
#
# Where the package comes from (no file name in the pillar, so upgrading needs no pillar edit):
# the newest package file in /var/lib/qubes-borg/packages in the template (copy a newer one
# there and re-apply to upgrade), or, when that directory has none, the template's repositories
# (then later versions come with the template's normal updates). The work is done by
# files/template-packages with dnf or apt-get directly, not by Salt's pkg module: the same
# commands run under dnf 4 and dnf5 (Fedora 41+), see salt/README.md. It reports a change only
# when it installed something, so re-applying is a no-op.
#
# Pillar: qubes-borg:template:name, :fromrepo, :packages
# Execute:
#   sudo qubesctl --skip-dom0 --targets=tpl-qubes-borg state.sls qubes-borg.install
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- if grains['nodename'] != 'dom0' %}
{%- if grains['os_family'] in ('RedHat', 'Debian') %}
{%- import_text "qubes-borg/files/template-packages" as script %}

qubes-borg-package-dir:
  file.directory:
    - name: /var/lib/qubes-borg/packages
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

qubes-borg-package:
  cmd.run:
    - name: {{ script|tojson }}
    - shell: /bin/bash
    - stateful: True
    - env:
        QUBES_BORG_PKGDIR: /var/lib/qubes-borg/packages
        QUBES_BORG_PACKAGES: {{ qb.template.packages|join(' ')|tojson }}
        QUBES_BORG_ENABLEREPO: {{ qb.template.fromrepo|tojson }}
    - require:
      - file: qubes-borg-package-dir

{%- else %}

qubes-borg-template-unsupported:
  test.fail_without_changes:
    - name: "qubes-borg: the template {{ grains['id'] }} is {{ grains['os'] }}; qubes-borg has packages for Fedora (RPM) and Debian (.deb) only, so base the template on one of them (pillar qubes-borg:template:source)"
{%- endif %}
{%- endif %}
