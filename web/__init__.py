"""The report page: a static page (HTML, one JavaScript module, CSS) the API serves under /ui/ (api/ui.py).

No framework, no CDN, no build step: the files here are the files the browser
gets. The page asks for the shop's API key once, keeps it in the tab's
sessionStorage and sends it as a Bearer header to the JSON routes
(GET /campaigns, /campaigns/{id}/report, /campaigns/{id}/recipients,
/dashboard); the page's own files need no key. docs/report-page.md.
"""
