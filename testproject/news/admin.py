from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Article, Author, Category, Comment, Tag


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name"]


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["name", "user"]
    list_select_related = ["user"]
    search_fields = ["name"]
    raw_id_fields = ["user"]


class CommentInline(admin.TabularInline):
    model = Comment
    extra = 0
    fields = ["author_name", "body", "is_approved", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Article)
class ArticleAdmin(admin.ModelAdmin):
    list_display = ["title", "category", "author", "published_at", "is_published", "views"]
    list_filter = ["is_published", "category"]
    list_select_related = ["category", "author", "stats"]
    search_fields = ["title"]
    prepopulated_fields = {"slug": ["title"]}
    date_hierarchy = "published_at"
    autocomplete_fields = ["author", "category", "tags"]
    inlines = [CommentInline]

    @admin.display(ordering="stats__views")
    def views(self, article: Article) -> int:
        stats = getattr(article, "stats", None)
        return stats.views if stats is not None else 0


@admin.register(Comment)
class CommentAdmin(admin.ModelAdmin):
    list_display = ["author_name", "article", "created_at", "is_approved"]
    list_filter = ["is_approved"]
    list_select_related = ["article"]
    search_fields = ["author_name", "body"]
    raw_id_fields = ["article"]
    actions = ["approve", "unapprove"]

    @admin.action(description="Approve selected comments")
    def approve(self, request: HttpRequest, queryset: QuerySet[Comment]) -> None:
        queryset.update(is_approved=True)

    @admin.action(description="Hide selected comments")
    def unapprove(self, request: HttpRequest, queryset: QuerySet[Comment]) -> None:
        queryset.update(is_approved=False)
