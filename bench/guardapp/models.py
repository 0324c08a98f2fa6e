"""Publishers, authors and their books: every kind of relation an N+1 can walk.

Imports Django only: the same app runs in perfkit's virtualenv and in the
competitors' (``bench/guard_corpus.py``).
"""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models


class Publisher(models.Model):
    name = models.CharField(max_length=100)

    class Meta:
        app_label = "guardapp"


class Author(models.Model):
    name = models.CharField(max_length=100)
    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE, related_name="authors")

    class Meta:
        app_label = "guardapp"


class Profile(models.Model):
    author = models.OneToOneField(Author, on_delete=models.CASCADE, related_name="profile")
    bio = models.CharField(max_length=200)

    class Meta:
        app_label = "guardapp"


class Tag(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "guardapp"


class Book(models.Model):
    title = models.CharField(max_length=200)
    summary = models.TextField(default="")
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    tags = models.ManyToManyField(Tag, related_name="books")
    editor = models.ForeignKey(Author, on_delete=models.SET_NULL, null=True, related_name="edited")

    class Meta:
        app_label = "guardapp"


class Comment(models.Model):
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveIntegerField()
    content_object = GenericForeignKey("content_type", "object_id")
    body = models.CharField(max_length=200)

    class Meta:
        app_label = "guardapp"
