# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.clone
# ================
# Clones the source template (the release's Fedora minimal by default, installed first if
# missing) into the dedicated template of the qubes-borg qubes, so the backup software never
# lands in a template other qubes use. Once the dedicated template exists (and carries the
# qubes-borg tag) the source is no longer looked at: deleting it later is fine. A qube of that
# name that this formula did not make is refused (qubes-borg.refuse).
#
# Pillar: qubes-borg:template:name, :source, :label
# Execute:
#   sudo qubesctl state.sls qubes-borg.clone
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- from "qubes-borg/owner.jinja" import owner, foreign with context %}
{%- if foreign %}

include:
  - qubes-borg.refuse
{%- else %}
{%- if owner.template == 'absent' %}

qubes-borg-template-source:
  qvm.template_installed:
    - name: {{ qb.template.source }}

qubes-borg-template-clone:
  qvm.clone:
    - name: {{ qb.template.name }}
    - source: {{ qb.template.source }}
    - require:
      - qvm: qubes-borg-template-source
{%- endif %}

qubes-borg-template:
  qvm.vm:
    - name: {{ qb.template.name }}
    - prefs:
      - label: {{ qb.template.label }}
    - tags:
      - add:
        - qubes-borg
{%- if owner.template == 'absent' %}
    - require:
      - qvm: qubes-borg-template-clone
{%- endif %}
{%- endif %}
