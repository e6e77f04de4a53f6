/* flashdeal pages: live stock, countdowns, buying with an Idempotency-Key, order status polling.
   Plain JS, no build step. Every call goes to the same-origin JSON API with a JSON content type
   (the API refuses other content types: that is its CSRF defence). */
"use strict";

(function () {
  const POLL_MS = 1000;
  const LIST_POLL_MS = 2000;
  const ORDER_POLL_LIMIT = 600; // stop polling one order after ~10 minutes
  const COOLDOWN_MS = 1000; // the buy button stays disabled this long after an answer
  const body = document.body;
  // Server clock minus browser clock: countdowns follow the server, not a wrong phone clock.
  const skew = Number(body.dataset.serverNow || Date.now()) - Date.now();
  const now = () => Date.now() + skew;

  const STATUS_LABELS = { scheduled: "Coming soon", open: "On sale", sold_out: "Sold out", ended: "Ended" };

  function span(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${h}h ${pad(m)}m`;
    if (h) return `${h}h ${pad(m)}m ${pad(s)}s`;
    return `${m}m ${pad(s)}s`;
  }

  /** The status a deal has right now, from its last known status and its window. */
  function liveStatus(status, startsMs, endsMs) {
    const t = now();
    if (status === "ended" || t >= endsMs) return "ended";
    if (status === "scheduled" && t >= startsMs) return "open"; // the next poll confirms it
    return status;
  }

  function countdownText(status, startsMs, endsMs) {
    if (status === "ended") return ""; // the badge says it
    if (status === "scheduled") return "Starts in " + span(startsMs - now());
    return "Ends in " + span(endsMs - now());
  }

  /** "04:59": what is left of a payment window. */
  function mmss(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    return String(Math.floor(s / 60)).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0");
  }

  function setBadge(el, status) {
    el.textContent = STATUS_LABELS[status] || status;
    el.className = el.className.replace(/\bbadge-\S+/g, "").trim() + " badge-" + status;
  }

  async function api(method, url, payload, headers) {
    // X-Requested-With: the proof of origin every state-changing API call needs (web/origin.py),
    // also for the bodyless ones (cancel, admin open and close).
    const base = { Accept: "application/json", "X-Requested-With": "fetch" };
    const init = { method, credentials: "same-origin", headers: Object.assign(base, headers || {}) };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const resp = await fetch(url, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    return { status: resp.status, data };
  }

  /** Where the waiting room's pass for a deal is kept (web/static/queue.js stores it, orders send it). */
  const queuePassKey = (dealId) => "flashdeal.queue-pass." + dealId;

  /** The waiting room's pass for this deal, as the order's Queue-Pass header. */
  function queuePassHeader(dealId) {
    const pass = sessionStorage.getItem(queuePassKey(dealId));
    return pass ? { "Queue-Pass": pass } : {};
  }

  // What the page scripts loaded after this one share (queue.js): one API call, one place for the pass.
  window.flashdeal = Object.freeze({ api, queuePassKey });

  /** A random key; crypto.randomUUID needs a secure context, getRandomValues does not. */
  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** Run fn every ms while the tab is visible; fn's promise is awaited so calls never pile up. */
  function every(ms, fn) {
    let timer = null;
    let stopped = false;
    async function tick() {
      if (stopped) return;
      if (!document.hidden) {
        try { await fn(); } catch (e) { /* network blip: try again next tick */ }
      }
      if (!stopped) timer = setTimeout(tick, ms);
    }
    tick();
    return () => { stopped = true; clearTimeout(timer); }; // safe to call from inside fn
  }

  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) el.textContent = d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    });
  }

  // ---- deal list ---------------------------------------------------------------------------
  function initDeals() {
    const cards = new Map();
    document.querySelectorAll(".deal-card").forEach((card) => {
      cards.set(Number(card.dataset.deal), {
        el: card,
        status: card.dataset.status,
        starts: Date.parse(card.dataset.starts),
        ends: Date.parse(card.dataset.ends),
      });
    });
    if (!cards.size) return;
    function render() {
      cards.forEach((c) => {
        const st = liveStatus(c.status, c.starts, c.ends);
        c.el.dataset.status = st;
        setBadge(c.el.querySelector('[data-field="status"]'), st);
        c.el.querySelector('[data-field="countdown"]').textContent = countdownText(st, c.starts, c.ends);
      });
    }
    setInterval(render, 1000);
    const query = new URLSearchParams(location.search);
    every(LIST_POLL_MS, async () => {
      const r = await api("GET", "/api/deals?" + query.toString());
      if (r.status !== 200) return;
      r.data.items.forEach((d) => {
        const c = cards.get(d.id);
        if (!c) return;
        c.status = d.status;
        c.starts = Date.parse(d.starts_at);
        c.ends = Date.parse(d.ends_at);
        c.el.querySelector('[data-field="remaining"]').textContent = d.remaining_stock;
        c.el.querySelector('[data-field="bar"]').value = d.remaining_stock;
      });
      render();
    });
  }

  // ---- one deal ----------------------------------------------------------------------------
  function initDeal() {
    const root = document.getElementById("deal");
    const dealId = Number(root.dataset.deal);
    const limit = Number(root.dataset.limit);
    const deal = { status: root.dataset.status, starts: Date.parse(root.dataset.starts), ends: Date.parse(root.dataset.ends) };
    const $ = (id) => document.getElementById(id);
    const form = $("buy-form");
    const button = $("buy");
    const saleMsg = $("sale-message");
    const orderMsg = $("order-message");
    const panel = $("order-panel");
    const storeKey = "flashdeal:order:" + dealId;
    let shown = deal.status; // status last announced
    let busy = false; // a buy request is in flight or cooling down
    let intent = null; // {key, quantity}: one purchase intent, whatever the number of clicks
    let order = null; // {id, status}
    let stopOrderPoll = null;

    function saleText(st) {
      if (st === "scheduled") return "The sale has not started yet.";
      if (st === "sold_out") return "Sold out: every unit has been claimed. Keep this page open: stock from canceled orders comes back.";
      if (st === "ended") return "This sale has ended.";
      return "";
    }

    function render() {
      const st = liveStatus(deal.status, deal.starts, deal.ends);
      root.dataset.status = st;
      setBadge($("deal-status"), st);
      $("countdown").textContent = countdownText(st, deal.starts, deal.ends);
      if (button) button.disabled = busy || st !== "open";
      if (st !== shown) {
        // One announcement per change of state, not one per second.
        saleMsg.textContent = st === "open" ? (shown === "sold_out" ? "Stock is back: you can buy again." : "The sale is open. You can buy now.") : saleText(st);
        saleMsg.className = "message" + (st === "open" ? " ok" : "");
        shown = st;
      }
    }

    async function pollDeal() {
      const r = await api("GET", "/api/deals/" + dealId);
      if (r.status !== 200) return;
      deal.status = r.data.status;
      deal.starts = Date.parse(r.data.starts_at);
      deal.ends = Date.parse(r.data.ends_at);
      $("remaining").textContent = r.data.remaining_stock;
      $("stock-bar").value = r.data.remaining_stock;
      render();
    }

    /** An order of a deal with a payment window that can still be paid. */
    const unpaid = (o) => Boolean(o && o.payBy) && (o.status === "accepted" || o.status === "confirmed");

    function renderPayment() {
      const box = $("pay-box");
      if (!box) return;
      box.hidden = !unpaid(order);
      if (box.hidden) return;
      const left = order.payBy - now();
      $("pay-countdown").textContent = left > 0 ? "Pay within " + mmss(left) : "Time to pay is up…";
      $("pay-order").disabled = left <= 0;
    }

    function showOrder(o) {
      order = o;
      panel.hidden = false;
      $("order-id").textContent = o.id;
      const state = $("order-state");
      state.textContent = o.status;
      state.className = "order-state order-" + o.status;
      $("cancel-order").hidden = !(o.status === "accepted" || o.status === "confirmed");
      const texts = {
        accepted: "Order accepted: your unit is reserved. Waiting for confirmation…",
        confirmed: "Order confirmed.",
        paid: "Paid. The order is yours.",
        expired: "The time to pay ran out: the order expired and its units went back on sale.",
        canceled: "Order canceled. The stock went back on sale.",
        failed: "Your order could not be saved. An admin has been alerted; you will not be charged.",
      };
      const held = o.declined ? "Card declined. Try again while time remains: your units are still held." : "Order accepted: your units are held until the time to pay runs out.";
      orderMsg.textContent = unpaid(o) ? held : texts[o.status] || "";
      orderMsg.className = "message" + (o.status === "failed" || o.status === "expired" || (unpaid(o) && o.declined) ? " error" : o.status === "canceled" ? "" : " ok");
      renderPayment();
      try { sessionStorage.setItem(storeKey, o.id); } catch (e) { /* private mode */ }
    }

    function pollOrder(id) {
      if (stopOrderPoll) stopOrderPoll();
      let left = ORDER_POLL_LIMIT;
      stopOrderPoll = every(POLL_MS, async () => {
        if (--left < 0) { stopOrderPoll(); return; }
        const r = await api("GET", "/api/orders/" + encodeURIComponent(id));
        if (r.status === 404 || r.status === 401) { stopOrderPoll(); return; }
        if (r.status !== 200) return;
        const payBy = r.data.pay_by ? Date.parse(r.data.pay_by) : 0;
        const declined = Boolean(r.data.payment_declined_at);
        if (!order || order.id !== id || order.status !== r.data.status || order.payBy !== payBy || order.declined !== declined) {
          showOrder({ id, status: r.data.status, payBy, declined });
        }
        // Final here: confirmed without a payment window; paid, expired, canceled and failed.
        if (r.data.status !== "accepted" && !(payBy && r.data.status === "confirmed")) stopOrderPoll();
      });
    }

    function refusal(code, message) {
      const st = liveStatus(deal.status, deal.starts, deal.ends);
      if (code === "sold_out") return "Sold out: every unit has been claimed.";
      if (code === "limit_exceeded") return `You have reached the limit of ${limit} per buyer for this deal.`;
      if (code === "deal_not_open") return st === "scheduled" ? "The sale has not started yet. " + countdownText(st, deal.starts, deal.ends) + "." : "This sale has ended.";
      if (code === "rate_limited") return "Too many attempts. Wait a few seconds and try again.";
      if (code === "queue_pass_required") return "This sale has a waiting room: join it first, you will be let in to buy.";
      if (code === "unauthorized") return "Your session has ended. Log in again to buy.";
      return message || "The order was refused.";
    }

    async function buy(quantity) {
      // The key belongs to the intent: a retry after a network error or a second click while
      // this intent is live sends the same key, so the gate answers with the same order.
      if (!intent || intent.quantity !== quantity) intent = { key: newKey(), quantity };
      let r = null;
      for (let attempt = 0; attempt < 3 && r === null; attempt++) {
        try {
          r = await api("POST", `/api/deals/${dealId}/orders`, { quantity }, Object.assign({ "Idempotency-Key": intent.key }, queuePassHeader(dealId)));
        } catch (e) {
          await new Promise((ok) => setTimeout(ok, 300 * (attempt + 1)));
        }
      }
      if (r === null) {
        orderMsg.textContent = "Network problem: we could not reach the shop. Press Buy again; you will not get two orders.";
        orderMsg.className = "message error";
        return false; // the intent (and its key) is kept for the retry
      }
      // 202: placed now; 200: the key's order from an earlier attempt, with its current status.
      if (r.status === 202 || r.status === 200) {
        showOrder({ id: r.data.order_id, status: r.data.status });
        pollOrder(r.data.order_id);
        pollDeal();
        return true;
      }
      const code = r.data && r.data.error ? r.data.error.code : "";
      orderMsg.textContent = refusal(code, r.data && r.data.error ? r.data.error.message : "");
      orderMsg.className = "message error";
      if (code === "sold_out" || code === "deal_not_open") pollDeal();
      return true;
    }

    if (form) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        if (busy) return;
        const q = Number($("quantity").value);
        if (!Number.isInteger(q) || q < 1 || q > limit) {
          orderMsg.textContent = `Choose a quantity from 1 to ${limit}.`;
          orderMsg.className = "message error";
          $("quantity").focus();
          return;
        }
        busy = true; // set before any await: the second click of a double click finds it
        render();
        orderMsg.textContent = "Placing your order…";
        orderMsg.className = "message";
        const answered = await buy(q);
        setTimeout(() => {
          if (answered) intent = null; // the next click is a new purchase
          busy = false;
          render();
        }, COOLDOWN_MS);
      });
    }

    const payButton = $("pay-order");
    if (payButton) {
      payButton.addEventListener("click", async () => {
        if (!order) return;
        payButton.disabled = true;
        const r = await api("POST", `/api/orders/${encodeURIComponent(order.id)}/pay`, {});
        if (r.status === 200 && r.data.checkout_url) {
          window.location.assign(r.data.checkout_url); // the provider's checkout; it comes back here
          return;
        }
        orderMsg.textContent = r.status === 200 ? "Complete the payment with the payment provider." : (r.data && r.data.error && r.data.error.message) || "The payment could not be started. Try again.";
        orderMsg.className = "message error";
        payButton.disabled = false;
        pollOrder(order.id);
      });
    }

    $("cancel-order").addEventListener("click", async () => {
      if (!order) return;
      const btn = $("cancel-order");
      btn.disabled = true;
      try {
        const r = await api("POST", `/api/orders/${encodeURIComponent(order.id)}/cancel`, {});
        if (r.status === 200) {
          showOrder({ id: order.id, status: r.data.status });
          pollDeal();
        } else {
          orderMsg.textContent = (r.data && r.data.error && r.data.error.message) || "The order could not be canceled.";
          orderMsg.className = "message error";
        }
      } finally {
        btn.disabled = false;
      }
    });

    let saved = null;
    try { saved = sessionStorage.getItem(storeKey); } catch (e) { saved = null; }
    if (saved && body.dataset.loggedIn === "true") pollOrder(saved); // after a reload, pick the order up again

    setInterval(() => { render(); renderPayment(); }, 1000);
    every(POLL_MS, pollDeal);
  }

  // ---- dev payment provider: checkout ------------------------------------------------------
  function initDevCheckout() {
    const root = document.getElementById("checkout");
    const payBy = Number(root.dataset.payBy);
    const $ = (id) => document.getElementById(id);
    const msg = $("checkout-message");
    const button = $("pay");
    let done = false;
    function tick() {
      const left = payBy - now();
      $("checkout-countdown").textContent = left > 0 ? "Pay within " + mmss(left) : "The time to pay has run out.";
      if (!done) button.disabled = left <= 0;
    }
    $("card-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      button.disabled = true;
      msg.textContent = "Paying…";
      msg.className = "message";
      const r = await api("POST", window.location.pathname, { card: $("card").value });
      const back = "/deals/" + root.dataset.deal;
      if (r.status === 200 && r.data.order_status === "paid") {
        done = true;
        msg.textContent = "Payment accepted: your order is paid. Back to the deal…";
        msg.className = "message ok";
        setTimeout(() => window.location.assign(back), 1500);
        return;
      }
      if (r.status === 200 && r.data.order_status === "expired") {
        done = true;
        msg.textContent = "The time to pay ran out before the payment: the order expired and the payment is refunded.";
        msg.className = "message error";
        return;
      }
      msg.textContent = r.status === 200 ? "Card declined. Try another card while time remains." : (r.data && r.data.error && r.data.error.message) || "The payment failed. Try again.";
      msg.className = "message error";
      button.disabled = false;
      tick();
    });
    tick();
    setInterval(tick, 1000);
  }

  // ---- my orders ---------------------------------------------------------------------------
  function initOrders() {
    const table = document.getElementById("orders");
    const msg = document.getElementById("orders-message");
    if (!table) return;
    const open = (status) => status === "accepted" || status === "confirmed" || status === "awaiting_payment";
    const shown = (o) => (o.awaiting_payment ? "awaiting_payment" : o.status);
    function setRow(row, status) {
      row.dataset.status = status;
      const badge = row.querySelector('[data-field="status"]');
      badge.textContent = status.replace("_", " ");
      badge.className = "badge order-" + status;
      const btn = row.querySelector("button.cancel");
      if (btn && !open(status)) btn.remove();
      const pay = row.querySelector("button.pay");
      if (pay && status !== "awaiting_payment") pay.remove();
      const due = row.querySelector('[data-field="pay-by"]');
      if (due && !open(status)) due.classList.add("settled");
    }
    table.addEventListener("click", async (ev) => {
      const payBtn = ev.target.closest("button.pay");
      if (!payBtn) return;
      payBtn.disabled = true;
      const r = await api("POST", `/api/orders/${encodeURIComponent(payBtn.dataset.order)}/pay`, {});
      if (r.status === 200 && r.data.checkout_url) {
        window.location.assign(r.data.checkout_url); // the provider's checkout; it comes back to the deal page
        return;
      }
      payBtn.disabled = false;
      msg.textContent = (r.data && r.data.error && r.data.error.message) || "The payment could not be opened. Try again.";
      msg.className = "message error";
    });
    table.addEventListener("click", async (ev) => {
      const btn = ev.target.closest("button.cancel");
      if (!btn) return;
      btn.disabled = true;
      const id = btn.dataset.order;
      const r = await api("POST", `/api/orders/${encodeURIComponent(id)}/cancel`, {});
      const row = table.querySelector(`tr[data-order="${CSS.escape(id)}"]`);
      if (r.status === 200) {
        setRow(row, shown(r.data));
        msg.textContent = "Order canceled. The stock went back on sale.";
        msg.className = "message ok";
      } else {
        btn.disabled = false;
        msg.textContent = (r.data && r.data.error && r.data.error.message) || "The order could not be canceled.";
        msg.className = "message error";
      }
    });
    every(2000, async () => {
      // Nothing can change by itself but an accepted order, or one waiting for its payment.
      if (!table.querySelector('tr[data-status="accepted"], tr[data-status="awaiting_payment"]')) return;
      const r = await api("GET", "/api/orders");
      if (r.status !== 200) return;
      r.data.items.forEach((o) => {
        const row = table.querySelector(`tr[data-order="${CSS.escape(o.order_id)}"]`);
        if (row && row.dataset.status !== shown(o)) setRow(row, shown(o));
      });
    });
  }

  // ---- admin: sale progress ----------------------------------------------------------------
  function initAdminDeal() {
    const root = document.getElementById("admin-deal");
    const dealId = Number(root.dataset.deal);
    const msg = document.getElementById("admin-message");
    const put = (name, value) => root.querySelectorAll(`[data-stat="${name}"]`).forEach((el) => { el.textContent = value; });
    every(POLL_MS, async () => {
      const r = await api("GET", `/api/admin/deals/${dealId}/stats`);
      if (r.status !== 200) return;
      const s = r.data;
      ["remaining_stock", "accepted", "confirmed", "paid", "expired", "canceled", "pending", "failed"].forEach((k) => put(k, s[k]));
      put("sold", s.total_stock - s.remaining_stock);
      if (s.queue) Object.keys(s.queue).forEach((k) => put("queue." + k, String(s.queue[k])));
      setBadge(root.querySelector('[data-stat="status"]'), s.status);
      document.getElementById("sold-bar").value = s.total_stock - s.remaining_stock;
      put("updated", "updated " + new Date().toLocaleTimeString());
    });
    root.querySelectorAll("[data-admin-action]").forEach((btn) => {
      btn.addEventListener("click", async () => {
        const action = btn.dataset.adminAction;
        const r = await api("POST", `/api/admin/deals/${dealId}/${action}`, {});
        msg.textContent = r.status === 200 ? `Deal ${action === "open" ? "opened" : "closed"}.` : (r.data && r.data.error ? r.data.error.message : "Failed.");
        msg.className = "message " + (r.status === 200 ? "ok" : "error");
      });
    });
  }

  const inits = { deals: initDeals, deal: initDeal, orders: initOrders, "admin-deal": initAdminDeal, "dev-checkout": initDevCheckout };
  localTimes();
  (inits[body.dataset.page] || function () {})();
})();
