"""The style sheet shared by deepstart's self-contained pages (report.html, the tuning page).

One place, so the report and the tuning page look alike and neither borrows from the other.
"""

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328}
header{background:#0d2b45;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;color:#b9cde0}
nav{position:sticky;top:0;background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:8px 32px}
nav a{margin-right:18px;color:#0969da;text-decoration:none}
main{padding:0 32px 48px;max-width:1200px}
h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f6f8fa}
figure{margin:12px 0} figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption,.muted{color:#656d76;font-size:13px}
.cols{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}
.cards{display:flex;flex-wrap:wrap;gap:16px;margin-top:16px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:12px 18px;min-width:170px}
.card b{display:block;font-size:24px} .card span{color:#656d76;font-size:13px}
"""
