// nasop ui: live refresh (server-sent events), log tails, filters, keyboard navigation.
// Pages work without it; it only makes them live and quicker to move around.
(function () {
  "use strict";
  const main = document.getElementById("main");
  const live = document.getElementById("live");

  // Theme: system by default, the button (or t) cycles light → dark → system.
  const themes = ["light", "dark", ""];
  function toggleTheme() {
    const now = document.documentElement.dataset.theme || "";
    const next = themes[(themes.indexOf(now) + 1) % themes.length];
    document.documentElement.dataset.theme = next;
    localStorage.setItem("nasop-theme", next);
  }
  document.getElementById("theme").addEventListener("click", toggleTheme);

  // Live refresh: on a change, fetch this page's <main> again (at most one at a time,
  // and again once more if changes came in meanwhile), keeping focus and scroll.
  let busy = false, again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const res = await fetch(location.href, { headers: { "X-Nasop-Partial": "1" } });
      const html = await res.text();
      const focused = document.activeElement && document.activeElement.dataset
        ? document.activeElement.dataset.href : null;
      const typing = document.activeElement && document.activeElement.tagName === "INPUT";
      if (!typing) {
        const logs = saveLogs();
        main.innerHTML = html;
        restoreLogs(logs);
        wire();
        if (focused) {
          const row = main.querySelector(`tr[data-href="${CSS.escape(focused)}"]`);
          if (row) row.focus({ preventScroll: true });
        }
        main.dataset.version = String(Number(main.dataset.version || 0) + 1);
      }
    } catch (e) { /* the next event retries */ }
    busy = false;
    if (again) { again = false; setTimeout(refresh, 200); }
  }
  if (window.EventSource) {
    const es = new EventSource("/events");
    es.addEventListener("open", () => live.classList.add("on"));
    es.addEventListener("error", () => live.classList.remove("on"));
    es.addEventListener("change", refresh);
  }

  // Log tails: fetched now and every 2 s while the page is open.
  function saveLogs() {
    const out = {};
    main.querySelectorAll("pre[data-src]").forEach(p => { out[p.dataset.src] = p.textContent; });
    return out;
  }
  function restoreLogs(saved) {
    main.querySelectorAll("pre[data-src]").forEach(p => {
      if (saved[p.dataset.src] !== undefined) p.textContent = saved[p.dataset.src];
    });
  }
  async function tail() {
    for (const pre of main.querySelectorAll("pre[data-src]")) {
      try {
        const res = await fetch(pre.dataset.src);
        const text = await res.text();
        if (text !== pre.textContent) {
          const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
          pre.textContent = text || "(empty)";
          if (atEnd) pre.scrollTop = pre.scrollHeight;
        }
      } catch (e) { /* retried */ }
    }
  }
  setInterval(tail, 2000);

  // Filters submit themselves; rows open on Enter or click.
  function wire() {
    main.querySelectorAll("form[data-auto]").forEach(f => {
      f.querySelectorAll("select").forEach(s => s.addEventListener("change", () => f.submit()));
    });
    main.querySelectorAll("svg[data-link]").forEach(svg => {
      svg.addEventListener("click", e => {
        const t = e.target.closest("[data-trial]");
        if (t && svg.dataset.link !== "#") location.href = svg.dataset.link + t.dataset.trial;
      });
    });
    main.querySelectorAll("tr[data-href]").forEach(tr => {
      tr.addEventListener("click", e => { if (!e.target.closest("a")) location.href = tr.dataset.href; });
    });
    tail();
  }
  wire();

  // Keys: j/k or arrows move between rows, Enter opens, / filters, t theme, Backspace up.
  document.addEventListener("keydown", e => {
    const tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea" || e.metaKey || e.ctrlKey || e.altKey) return;
    const rows = Array.from(main.querySelectorAll("tr[data-href]"));
    const at = rows.indexOf(document.activeElement);
    if (e.key === "j" || e.key === "ArrowDown") {
      if (rows.length) { rows[Math.min(at + 1, rows.length - 1)].focus(); e.preventDefault(); }
    } else if (e.key === "k" || e.key === "ArrowUp") {
      if (rows.length) { rows[Math.max(at - 1, 0)].focus(); e.preventDefault(); }
    } else if (e.key === "Enter" && at >= 0) {
      location.href = rows[at].dataset.href;
    } else if (e.key === "/") {
      const f = document.getElementById("filter");
      if (f) { f.focus(); e.preventDefault(); }
    } else if (e.key === "t") {
      toggleTheme();
    } else if (e.key === "n" || e.key === "p") {
      const link = main.querySelector(e.key === "n" ? "a[rel=next]" : "a[rel=prev]");
      if (link) location.href = link.href;
    }
  });
})();
