# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-borg.refuse
# =================
# Included by the dom0 states instead of their own states when a qube with one of the formula's
# names exists but was not made by it (no `qubes-borg` tag, see owner.jinja): one failing state
# per such qube, saying which, why, and how to choose another name. Nothing is changed.
##
{%- from "qubes-borg/map.jinja" import qb with context %}
{%- from "qubes-borg/owner.jinja" import foreign with context %}
{%- set keys = {'template': 'template:name'} %}
{%- for role in foreign %}
{%- set name = qb[role].name %}

qubes-borg-refuse-{{ role }}:
  test.fail_without_changes:
    - name: {{ ('qubes-borg: a qube named ' ~ name ~ ' already exists and was not created by this formula (it has no qubes-borg tag), so it is left alone and nothing was changed. Choose another name for the ' ~ role ~ ' role in /srv/pillar/base/qubes-borg/init.sls (qubes-borg: ' ~ keys.get(role, role ~ ':name') ~ ': NEW-NAME), or, if it is a qube an earlier run of this formula made, tag it: qvm-tags ' ~ name ~ ' add qubes-borg')|tojson }}
{%- endfor %}
{%- if not foreign %}

qubes-borg-refuse-nothing:
  test.succeed_without_changes:
    - name: "qubes-borg: every existing qube with a formula name carries the qubes-borg tag"
{%- endif %}
