from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from django_perfkit import ratelimit

from . import views

app_name = "news"

urlpatterns = [
    path("", views.home, name="home"),
    path("articles/", views.article_list, name="article_list"),
    path("articles/naive/", views.article_list_naive, name="article_list_naive"),
    path("articles/<slug:slug>/", views.article_detail, name="article_detail"),
    path("articles/<slug:slug>/comment/", views.article_comment, name="article_comment"),
    path("api/articles/", views.api_articles, name="api_articles"),
    path("api/articles/naive/", views.api_articles_naive, name="api_articles_naive"),
    path("api/articles/async/", views.api_articles_async, name="api_articles_async"),
    path("comments/", views.comments_by, name="comments_by"),
    path("comments/naive/", views.comments_by_naive, name="comments_by_naive"),
    path("search/", views.search, name="search"),
    path(
        "login/",
        # Two limits on POST, as a real login form needs: per username (guessing
        # one account's password) and per client (trying many accounts).
        ratelimit(key="post:username", rate=views.demo_rate("login-user"), method="POST")(
            ratelimit(key="ip", rate=views.demo_rate("login-ip"), method="POST")(
                auth_views.LoginView.as_view(template_name="news/login.html")
            )
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="news:home"), name="logout"),
    path("healthz", views.healthz, name="healthz"),
]
