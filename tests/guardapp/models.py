"""Models for the N+1 detection tests: every kind of relation Django has."""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models


class Publisher(models.Model):
    name = models.CharField(max_length=50)


class Writer(models.Model):
    name = models.CharField(max_length=50)
    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE, related_name="writers")


class Profile(models.Model):
    writer = models.OneToOneField(Writer, on_delete=models.CASCADE, related_name="profile")
    bio = models.CharField(max_length=50)


class Label(models.Model):
    name = models.CharField(max_length=50)


class Book(models.Model):
    title = models.CharField(max_length=50)
    summary = models.TextField(default="")
    writer = models.ForeignKey(Writer, on_delete=models.CASCADE, related_name="books")
    editor = models.ForeignKey(Writer, null=True, on_delete=models.SET_NULL, related_name="edited")
    labels = models.ManyToManyField(Label, related_name="books")


class Note(models.Model):
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveIntegerField()
    target = GenericForeignKey("content_type", "object_id")
    text = models.CharField(max_length=50)


class Event(models.Model):
    """A table the index advisor tests fill with 50,000 rows: no index but the key."""

    name = models.CharField(max_length=50)
    kind = models.IntegerField()
    happened = models.DateTimeField()
    is_public = models.BooleanField(default=True)
