"""`{{ value|bytes }}`: a byte count as people read it (1.5 GB)."""

from django import template

from archive.statistics import human_size

register = template.Library()


@register.filter(name="bytes")
def bytes_filter(value: int | None) -> str:
    return human_size(value)
