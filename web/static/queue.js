/* The waiting room page: join (solving the proof of work when the deal asks for one), then poll the
   status at the interval the server asks for, until let in; the pass is kept for the deal page's order
   (sessionStorage, sent as the Queue-Pass header by flashdeal.js). Plain JS, no build step. */
"use strict";

(function () {
  const root = document.getElementById("queue");
  if (!root) return;
  const dealId = Number(root.dataset.deal);
  const $ = (id) => document.getElementById(id);
  const { api, queuePassKey } = window.flashdeal; // flashdeal.js, loaded before this script
  const PASS_KEY = queuePassKey(dealId);
  const TEXT = {
    not_joined: "You have not joined yet.",
    waiting: "You are in the line.",
    admitted: "It is your turn: you may buy now.",
    expired: "Your turn came and went: the pass expired unused.",
    sold_out: "Sold out: every unit has been claimed. Sorry!",
    closed: "This sale has ended.",
  };

  function hex(buf) {
    return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function zeroBits(buf) {
    let n = 0;
    for (const b of new Uint8Array(buf)) {
      if (b === 0) { n += 8; continue; }
      return n + Math.clz32(b) - 24;
    }
    return n;
  }

  /** A nonce with sha256(challenge + nonce) starting with `bits` zero bits (hashcash), as the server checks. */
  async function solve(challenge, bits) {
    const enc = new TextEncoder();
    for (let n = 0; ; n++) {
      const digest = await crypto.subtle.digest("SHA-256", enc.encode(challenge + n));
      if (zeroBits(digest) >= bits) return String(n);
      if (n % 2000 === 0) $("queue-state").textContent = `Proving you are not a bot… (${n} tries)`;
    }
  }

  function show(q) {
    $("queue-state").textContent = TEXT[q.state] || q.state;
    $("queue-state").dataset.state = q.state;
    $("queue-facts").hidden = q.state !== "waiting";
    $("queue-position").textContent = q.position === null ? "drawn at random when the sale starts" : String(q.position);
    $("queue-eta").textContent = q.eta_seconds === null ? "paused for now" : `about ${q.eta_seconds} s`;
    $("queue-join").hidden = q.state !== "not_joined";
    $("queue-go").hidden = q.state !== "admitted";
    if (q.state === "admitted" && q.pass) {
      sessionStorage.setItem(PASS_KEY, q.pass);
      $("queue-pass-expiry").textContent = "until " + new Date(q.pass_expires_at).toLocaleTimeString();
    }
  }

  let timer = null;
  async function poll() {
    let next = 5000;
    try {
      const r = await api("GET", `/api/deals/${dealId}/queue`);
      if (r.status === 200) {
        show(r.data);
        next = r.data.poll_after_ms;
        if (["sold_out", "closed", "expired"].includes(r.data.state)) return; // final: stop polling
      }
    } catch (e) { /* network blip: try again later */ }
    timer = setTimeout(poll, next);
  }

  $("queue-join").addEventListener("click", async () => {
    $("queue-join").disabled = true;
    let body = {};
    const ch = await api("GET", `/api/deals/${dealId}/queue/challenge`);
    if (ch.status === 200 && ch.data.bits > 0) {
      body = { challenge: ch.data.challenge, nonce: await solve(ch.data.challenge, ch.data.bits) };
    }
    const r = await api("POST", `/api/deals/${dealId}/queue`, body);
    $("queue-join").disabled = false;
    if (r.status !== 200) {
      $("queue-state").textContent = r.data && r.data.error ? r.data.error.message : "Could not join; try again.";
      return;
    }
    show(r.data);
    clearTimeout(timer);
    timer = setTimeout(poll, r.data.poll_after_ms);
  });

  poll();
})();
