from __future__ import annotations

from django import forms

from .models import Comment


class CommentForm(forms.ModelForm):
    class Meta:
        model = Comment
        fields = ["author_name", "body"]
        labels = {"author_name": "Your name", "body": "Comment"}
        widgets = {"body": forms.Textarea(attrs={"rows": 4})}

    def clean_body(self) -> str:
        body: str = self.cleaned_data["body"].strip()
        if not body:
            raise forms.ValidationError("Please write something.")
        return body
