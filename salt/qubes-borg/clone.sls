# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.clone
# ================
# Installs the source template (Fedora minimal by default) if missing and clones it into the
# dedicated template of the qubes-borg qubes, so the backup software never lands in a template
# other qubes use.
#
# Pillar: qubes-borg:template:name, :source, :label
# Execute:
#   sudo qubesctl state.sls qubes-borg.clone
##
{%- from "qubes-borg/map.jinja" import qb with context %}

qubes-borg-template-source:
  qvm.template_installed:
    - name: {{ qb.template.source }}

qubes-borg-template:
  qvm.clone:
    - name: {{ qb.template.name }}
    - source: {{ qb.template.source }}
    - require:
      - qvm: qubes-borg-template-source

qubes-borg-template-prefs:
  qvm.vm:
    - name: {{ qb.template.name }}
    - prefs:
      - label: {{ qb.template.label }}
    - tags:
      - add:
        - qubes-borg
    - require:
      - qvm: qubes-borg-template
