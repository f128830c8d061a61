-- Question: does the fine-tuned model beat the baselines in the latest offline evaluation?
-- Columns: metric, k (cut-off; null for mrr), then value and 95% bootstrap interval per system
--          (hybrid: the model blended with the image baseline at the weight the evaluation chose;
--          null when evaluate.hybrid_weights is empty), and lift_vs_best_baseline of the model
--          alone (relative, 0.10 = +10%).
with

metrics as (
    select * from eval_metrics
    where segment is null  -- every query; segment 'category=<c>' rows hold the per-category breakdown
),

pivoted as (
    select
        metric,
        k,
        max(case when system = 'siglip' then value end) as siglip,
        max(case when system = 'siglip' then ci_low end) as siglip_ci_low,
        max(case when system = 'siglip' then ci_high end) as siglip_ci_high,
        max(case when system = 'hybrid' then value end) as hybrid,
        max(case when system = 'image_baseline' then value end) as image_baseline,
        max(case when system = 'text_baseline' then value end) as text_baseline
    from metrics
    group by metric, k
),

final as (
    select
        metric,
        k,
        round(siglip, 4) as siglip,
        round(siglip_ci_low, 4) as siglip_ci_low,
        round(siglip_ci_high, 4) as siglip_ci_high,
        round(hybrid, 4) as hybrid,
        round(image_baseline, 4) as image_baseline,
        round(text_baseline, 4) as text_baseline,
        round(siglip / greatest(image_baseline, text_baseline) - 1, 4) as lift_vs_best_baseline
    from pivoted
)

select * from final
order by metric, k
