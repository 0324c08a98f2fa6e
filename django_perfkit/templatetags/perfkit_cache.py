"""``{% cached_as %}``: a template fragment cached until what it shows changes.

::

    {% load perfkit_cache %}
    {% cached_as "article-rows" page_obj.object_list timeout=600 vary=request.user.is_staff %}
      {% for article in page_obj.object_list %}...{% endfor %}
    {% endcached_as %}

The first argument names the fragment; the others are the querysets it shows,
unevaluated: the body iterates them. ``timeout`` (seconds) and ``vary`` (a
plain value the text also depends on) are optional; the active language is
always part of the key. See :mod:`django_perfkit.cache.fragments` and
docs/cache.md.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django import template
from django.template.base import FilterExpression, Node, NodeList, Parser, Token
from django.template.context import Context

register = template.Library()

_OPTIONS = ("timeout", "vary")


def _source(nodelist: NodeList) -> str:
    """A hash of the body's own template text (not of the templates it includes)."""
    digest = hashlib.blake2b(digest_size=8)
    stack: list[Any] = list(reversed(nodelist))
    while stack:
        node = stack.pop()
        token = getattr(node, "token", None)
        text = token.contents if token is not None else type(node).__name__
        digest.update(b"\x00" + text.encode())
        for attribute in getattr(node, "child_nodelists", ()):
            stack.extend(reversed(getattr(node, attribute, None) or ()))
    return digest.hexdigest()


class CachedAsNode(Node):
    child_nodelists = ("nodelist",)

    def __init__(
        self,
        nodelist: NodeList,
        name: FilterExpression,
        samples: list[FilterExpression],
        options: dict[str, FilterExpression],
    ) -> None:
        self.nodelist = nodelist
        self.name = name
        self.samples = samples
        self.options = options
        self.source = _source(nodelist)

    def render(self, context: Context) -> str:
        from django_perfkit.cache.fragments import check_arguments, render_cached

        name = self.name.resolve(context)
        samples = [expression.resolve(context) for expression in self.samples]
        timeout = self.options["timeout"].resolve(context) if "timeout" in self.options else None
        vary = self.options["vary"].resolve(context) if "vary" in self.options else None
        try:
            check_arguments(name, samples, timeout, vary)
        except (TypeError, ValueError) as exc:
            return self._uncached(context, str(exc))
        return render_cached(
            name,
            samples,
            lambda: self.nodelist.render(context),
            timeout=timeout,
            vary=vary,
            source=self.source,
        )

    def _uncached(self, context: Context, problem: str) -> str:
        # A value the template gave at render time (a list where a queryset was
        # expected: Page.__getitem__ turns object_list into one). Under DEBUG,
        # the developer sees the error; in production the page is served,
        # uncached, and the problem logged once, never a 500 because of perfkit.
        from django.conf import settings

        from django_perfkit.cache import entries

        if settings.DEBUG:
            raise template.TemplateSyntaxError(problem)
        entries.warn_once("a {% cached_as %} fragment", problem)
        return self.nodelist.render(context)


@register.tag("cached_as")
def do_cached_as(parser: Parser, token: Token) -> CachedAsNode:
    """``{% cached_as "name" queryset [queryset ...] [timeout=N] [vary=value] %}``."""
    bits = token.split_contents()
    tag = bits.pop(0)
    samples: list[FilterExpression] = []
    options: dict[str, FilterExpression] = {}
    positional: list[str] = []
    for bit in bits:
        key, sep, value = bit.partition("=")
        if sep and key.isidentifier():
            if key not in _OPTIONS:
                raise template.TemplateSyntaxError(
                    f"{{% {tag} %}}: unknown option {key!r}; the options are timeout= and vary="
                )
            if key in options:
                raise template.TemplateSyntaxError(f"{{% {tag} %}}: {key}= given twice")
            options[key] = parser.compile_filter(value)
        elif options:
            raise template.TemplateSyntaxError(
                f"{{% {tag} %}}: {bit!r} after an option; put the querysets before "
                "timeout= and vary="
            )
        else:
            positional.append(bit)
    if len(positional) < 2:
        raise template.TemplateSyntaxError(
            f'{{% {tag} "name" queryset [queryset ...] [timeout=N] [vary=value] %}}: give the '
            "fragment's name and at least one queryset it shows"
        )
    name = parser.compile_filter(positional[0])
    samples = [parser.compile_filter(bit) for bit in positional[1:]]
    nodelist = parser.parse((f"end{tag}",))
    parser.delete_first_token()
    return CachedAsNode(nodelist, name, samples, options)
