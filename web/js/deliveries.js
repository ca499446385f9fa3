// A broadcast with every one of its deliveries. GET /api/broadcasts/{id} answers with the
// counts and one page of deliveries (a county of 10,000 terminals is 6.5 MB at once);
// the board and the records that draw every terminal follow `deliveries_next`.
import { get } from "./api.js";

const PAGE = 5000;

export async function broadcastWithDeliveries(id) {
  const base = `/api/broadcasts/${encodeURIComponent(id)}?limit=${PAGE}`;
  const view = await get(base);
  let next = view.deliveries_next;
  while (next) {
    const page = await get(`${base}&after=${encodeURIComponent(next)}`);
    view.deliveries.push(...page.deliveries);
    next = page.deliveries_next;
  }
  view.deliveries_next = null;
  return view;
}
