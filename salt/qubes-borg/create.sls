# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.create
# =================
# Creates the qubes-borg qubes on the dedicated template and enforces their security-relevant
# preferences on every run:
#   sys-backup-mnt-dvm  AppVM, disposable template (template_for_dispvms), no network
#   sys-backup-mnt      named disposable (class DispVM) on sys-backup-mnt-dvm, no network:
#                       mounts the volumes dom0 attaches and runs borg
#   sys-backup          AppVM with network (default netvm): ssh to the borg server
#   ssh-backup          AppVM vault, no network: the backup key's ssh-agent (qube service
#                       qubes-borg-agent)
# A qube of one of these names that this formula did not make (no qubes-borg tag) stops the
# whole formula with a message (qubes-borg.refuse); its own qubes are adopted again.
# Nothing is configured inside the disposable: it is discarded at shutdown, so its software
# comes from the template (qubes-borg.install).
#
# Pillar: qubes-borg:<role>:name, :label (and qubes-borg:sys-backup:netvm)
# Execute:
#   sudo qubesctl state.sls qubes-borg.create
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- from "qubes-borg/owner.jinja" import foreign with context %}
{%- if foreign %}

include:
  - qubes-borg.refuse
{%- else %}

include:
  - qubes-borg.clone

qubes-borg-sys-backup-mnt-dvm:
  qvm.vm:
    - name: {{ qb['sys-backup-mnt-dvm'].name }}
    - present:
      - template: {{ qb.template.name }}
      - label: {{ qb['sys-backup-mnt-dvm'].label }}
    - prefs:
      - template: {{ qb.template.name }}
      - label: {{ qb['sys-backup-mnt-dvm'].label }}
      - netvm: ""
      - template_for_dispvms: True
      - default_dispvm: ""
    - tags:
      - add:
        - qubes-borg
    - require:
      - qvm: qubes-borg-template

qubes-borg-sys-backup-mnt:
  qvm.vm:
    - name: {{ qb['sys-backup-mnt'].name }}
    - present:
      - class: DispVM
      - template: {{ qb['sys-backup-mnt-dvm'].name }}
      - label: {{ qb['sys-backup-mnt'].label }}
    - prefs:
      - template: {{ qb['sys-backup-mnt-dvm'].name }}
      - label: {{ qb['sys-backup-mnt'].label }}
      - netvm: ""
      - default_dispvm: ""
    - tags:
      - add:
        - qubes-borg
    - require:
      - qvm: qubes-borg-sys-backup-mnt-dvm

qubes-borg-sys-backup:
  qvm.vm:
    - name: {{ qb['sys-backup'].name }}
    - present:
      - template: {{ qb.template.name }}
      - label: {{ qb['sys-backup'].label }}
    - prefs:
      - template: {{ qb.template.name }}
      - label: {{ qb['sys-backup'].label }}
      - netvm: {{ qb['sys-backup'].netvm|tojson }}
      - default_dispvm: ""
    - tags:
      - add:
        - qubes-borg
    - require:
      - qvm: qubes-borg-template

qubes-borg-ssh-backup:
  qvm.vm:
    - name: {{ qb['ssh-backup'].name }}
    - present:
      - template: {{ qb.template.name }}
      - label: {{ qb['ssh-backup'].label }}
    - prefs:
      - template: {{ qb.template.name }}
      - label: {{ qb['ssh-backup'].label }}
      - netvm: ""
      - default_dispvm: ""
    - features:
      - enable:
        # starts qubes-borg-agent@default.service (ConditionPathExists on the qube service)
        - service.qubes-borg-agent
    - tags:
      - add:
        - qubes-borg
    - require:
      - qvm: qubes-borg-template
{%- endif %}
